"""Japanese frontend: upstream Bert-VITS2 2.3 rules on real pyopenjtalk and a real BERT tokenizer."""
from __future__ import annotations

import pytest

from tasks import frontends
from tasks.frontends import ja
from tasks.frontends.symbols import BASE_SYMBOLS, PUNCTUATION


class CharTokenizer:
    """One token per character, like upstream's deberta-v2 char-wwm Japanese tokenizer."""

    def tokenize(self, text: str) -> list[str]:
        return list(text)


class DropsCharsTokenizer(CharTokenizer):
    """A tokenizer that silently drops some characters, so some words get no token at all."""

    def __init__(self, dropped: str) -> None:
        self.dropped = set(dropped)

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if c not in self.dropped]


SENTENCES = [
    "こんにちは",
    "私は学生です。",
    "えーっと、そうですね…本当？！",
    "コーヒーとケーキ、どっちがいい?",
    "ウォッカ、ディズニー、ツァー、ヴァイオリン、クヮ",
    "「やっぱりお化けや幽霊じゃないんだ」",
    "Hello世界😀、ＡＢＣとαβγ",
    "1,000円で3.5%の割引",
    "ー!あ、すごい!ーー",
    "々",
]


def run(text: str, tokenizer=None) -> tuple[list[str], list[int], list[int]]:
    return ja.g2p(ja.normalize(text), tokenizer or CharTokenizer())


def assert_invariants(norm: str, phones: list[str], tones: list[int], word2ph: list[int], tokenizer) -> None:
    assert len(phones) == len(tones) == sum(word2ph)
    assert len(word2ph) == len(tokenizer.tokenize(norm)) + 2
    assert phones[0] == phones[-1] == "_" and tones[0] == tones[-1] == 0
    assert word2ph[0] == word2ph[-1] == 1
    assert all(w >= 0 for w in word2ph)
    assert set(tones) <= {0, 1}
    assert set(phones) <= set(BASE_SYMBOLS), set(phones) - set(BASE_SYMBOLS)


def test_module_declares_version_and_two_tones():
    assert ja.VERSION == "ja-1" and ja.NUM_TONES == 2
    assert frontends.backend_info("ja") == (2, "ja-1")


def test_konnichiwa_phones_and_heiban_tones():
    # こんにちは is accent type 0 (heiban): first mora low, the rest high; ん is N, は read ワ.
    phones, tones, word2ph = run("こんにちは")
    assert phones == ["_", "k", "o", "N", "n", "i", "ch", "i", "w", "a", "_"]
    assert tones == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0]
    # one word of 5 characters, 9 phones spread evenly, earlier characters first
    assert word2ph == [1, 2, 2, 2, 2, 1, 1]


def test_watashi_wa_gakusei_desu_phones_tones_and_word2ph():
    # 私は: heiban (ワ low, タシワ high). 学生です: heiban ガクセー, then です falls after デ.
    # The long vowel of セー is a repeated e; the final `.` is a phone with tone 0.
    phones, tones, word2ph = run("私は学生です。")
    assert phones == ["_", "w", "a", "t", "a", "sh", "i", "w", "a",
                      "g", "a", "k", "u", "s", "e", "e", "d", "e", "s", "u", ".", "_"]  # fmt: skip
    assert tones == [0, 0, 0, 1, 1, 1, 1, 1, 1,
                     0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]  # fmt: skip
    # words 私|は|学生|です|. -> phones 6|2|7|4|1 over 1|1|2|2|1 characters
    assert word2ph == [1, 6, 2, 4, 3, 2, 2, 1, 1]


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("100円", "百円"),
        ("3.5", "三点五"),
        ("1.0", "一点零"),  # upstream (num2words) would drop the .0
        ("1,000,000", "百万"),
        ("$5", "五ドル"),
        ("¥1,500", "千五百円"),
        ("50%", "五十パーセント"),
        ("１２３", "百二十三"),  # full-width digits via NFKC
    ],
)
def test_numbers_become_japanese_words(raw, norm):
    assert ja.normalize(raw) == norm


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("はい、そう。", "はい,そう."),
        ("本当？！", "本当?!"),
        ("そうか…", "そうか..."),
        ("「君」『僕』（彼）", "'君''僕''彼'"),
        ("あ：い；う", "あ,い,う"),
        ("ええ—まあ", "ええ-まあ"),
        ("すごい～", "すごいー"),  # wave dash read as a long vowel, as upstream
        ("絵文字😀です#", "絵文字です"),  # unreadable characters are removed
        ("ば\u3099", "ば"),
    ],
)
def test_punctuation_maps_to_kept_set(raw, norm):
    assert ja.normalize(raw) == norm


def test_normalized_text_keeps_only_readable_characters_and_kept_punctuation():
    # spaces, emoji, stars and guillemets go; full-width Latin becomes ASCII; both wave dashes
    # become the long-vowel mark
    assert ja.normalize("Ｈｅｌｌｏ、世界！😀 ☆★ (テスト) ~ 〜 «x»") == "Hello,世界!'テスト'ーーx"


def test_punctuation_becomes_phones_with_tone_zero():
    phones, tones, _ = run("はい、そう？！…")
    puncts = [(p, t) for p, t in zip(phones, tones) if p in PUNCTUATION]
    assert puncts == [(",", 0), ("?", 0), ("!", 0), (".", 0), (".", 0), (".", 0)]


@pytest.mark.parametrize("text", ["Hello世界😀", "ＡＢＣとαβγ", "🎉🎉", "x"])
def test_mixed_scripts_do_not_crash(text, minilm_tokenizer):
    norm = ja.normalize(text)
    phones, tones, word2ph = ja.g2p(norm, minilm_tokenizer)
    assert_invariants(norm, phones, tones, word2ph, minilm_tokenizer)


def test_latin_letters_are_read_in_katakana():
    phones, _, _ = run("ABC")
    assert phones[1:-1] == ["e", "i", "b", "i", "i", "sh", "i", "i"]  # エイビーシー


def test_long_vowel_mark_repeats_the_vowel():
    assert run("ラーメン")[0] == ["_", "r", "a", "a", "m", "e", "N", "_"]
    assert run("コーヒー")[0] == ["_", "k", "o", "o", "h", "i", "i", "_"]


def test_long_vowel_mark_with_nothing_before_it_is_dropped():
    assert run("ーあ")[0] == ["_", "a", "_"]


def test_sokuon_is_q():
    phones, tones, _ = run("きって")
    assert phones == ["_", "k", "i", "q", "t", "e", "_"]
    assert tones == [0, 1, 1, 0, 0, 0, 0]  # きって is accent type 1 (high, then falling)


def test_hatsuon_is_capital_n_unless_not_jp_extra():
    assert run("ほん")[0] == ["_", "h", "o", "N", "_"]
    assert ja.g2p("ほん", CharTokenizer(), use_jp_extra=False)[0] == ["_", "h", "o", "n", "_"]


def test_loanword_morae_stay_inside_the_symbol_table():
    # OpenJTalk's v / kw (not in the 2.x table) become b / k, like upstream's older rules
    assert run("ヴァイオリン")[0] == ["_", "b", "a", "i", "o", "r", "i", "N", "_"]
    assert run("クヮ")[0] == ["_", "k", "a", "_"]
    assert run("ティー、ファン、ウォッカ")[0] == ["_", "t", "i", "i", ",", "f", "a", "N", ",",
                                              "w", "o", "q", "k", "a", "_"]  # fmt: skip


def test_every_mora_reads_to_base_symbols():
    phones = {p for kana in ja.MORA_PHONES for p in run(kana)[0]}
    assert phones <= set(BASE_SYMBOLS), phones - set(BASE_SYMBOLS)


@pytest.mark.parametrize("text", SENTENCES)
def test_sentences_give_base_symbols_and_consistent_word2ph(text, minilm_tokenizer):
    norm = ja.normalize(text)
    for tokenizer in (minilm_tokenizer, CharTokenizer()):
        phones, tones, word2ph = ja.g2p(norm, tokenizer)
        assert_invariants(norm, phones, tones, word2ph, tokenizer)


def test_wordpiece_run_spanning_several_words_still_counts_every_token(minilm_tokenizer):
    # The BERT tokenizer makes one [UNK] of the kana run じゃないんだ (several OpenJTalk words);
    # per-word tokenisation (upstream) would count more tokens than the whole text has.
    norm = ja.normalize("幽霊じゃないんだ")
    phones, tones, word2ph = ja.g2p(norm, minilm_tokenizer)
    assert_invariants(norm, phones, tones, word2ph, minilm_tokenizer)
    assert minilm_tokenizer.tokenize(norm)[-1] == "[UNK]"
    assert word2ph[-2] == len("janaiNda")  # j a n a i N d a all on that one token


def test_word_without_tokens_hands_its_phones_to_the_previous_word():
    phones, _, word2ph = ja.g2p("私は学生", DropsCharsTokenizer("は"))
    assert phones[1:9] == ["w", "a", "t", "a", "sh", "i", "w", "a"]
    assert word2ph == [1, 8, 4, 3, 1]  # 私 carries は's w a; 学生 as usual


def test_leading_word_without_tokens_hands_its_phones_to_the_next_word():
    _, _, word2ph = ja.g2p("私は学生", DropsCharsTokenizer("私"))
    assert word2ph == [1, 8, 4, 3, 1]


def test_text_without_any_token_keeps_its_phones_on_the_start_symbol():
    phones, _, word2ph = ja.g2p("はい", DropsCharsTokenizer("はい"))
    assert phones == ["_", "h", "a", "i", "_"] and word2ph == [4, 1]


def test_unreadable_character_contributes_no_phones():
    phones, tones, word2ph = run("々")
    assert phones == ["_", "_"] and tones == [0, 0] and word2ph == [1, 0, 1]


def test_distribute_phone_fills_earlier_tokens_first():
    assert ja.distribute_phone(7, 3) == [3, 2, 2]
    assert ja.distribute_phone(1, 3) == [1, 0, 0]
    assert ja.distribute_phone(0, 2) == [0, 0]


def test_registry_runs_the_japanese_backend(minilm_tokenizer):
    norm = frontends.normalize("ja", "こんにちは。")
    result = frontends.g2p("ja", norm, minilm_tokenizer)
    assert result.phones[1:-1] == ["k", "o", "N", "n", "i", "ch", "i", "w", "a", "."]
    assert len(result.word2ph) == len(minilm_tokenizer.tokenize(norm)) + 2


def test_every_common_voice_transcript_converts(shared_speech, minilm_tokenizer):
    rows = (shared_speech / "ja_commonvoice" / "metadata.csv").read_text(encoding="utf-8").splitlines()
    texts = [line.split("|", 1)[1] for line in rows if "|" in line]
    assert texts
    for text in texts:
        norm = ja.normalize(text)
        phones, tones, word2ph = ja.g2p(norm, minilm_tokenizer)
        assert_invariants(norm, phones, tones, word2ph, minilm_tokenizer)
        assert len(phones) > 2, text

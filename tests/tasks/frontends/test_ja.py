"""Japanese frontend: upstream Bert-VITS2 2.3 rules on real pyopenjtalk and a real BERT tokenizer."""
from __future__ import annotations

import pytest

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


def test_punctuation_becomes_phones_with_tone_zero():
    phones, tones, _ = run("はい、そう？！…")
    puncts = [(p, t) for p, t in zip(phones, tones) if p in PUNCTUATION]
    assert puncts == [(",", 0), ("?", 0), ("!", 0), (".", 0), (".", 0), (".", 0)]


@pytest.mark.parametrize("text", ["Hello世界😀", "ＡＢＣとαβγ", "🎉🎉", "x"])
def test_mixed_scripts_do_not_crash(text, minilm_tokenizer):
    norm = ja.normalize(text)
    phones, tones, word2ph = ja.g2p(norm, minilm_tokenizer)
    assert_invariants(norm, phones, tones, word2ph, minilm_tokenizer)


def test_sokuon_is_q():
    phones, tones, _ = run("きって")
    assert phones == ["_", "k", "i", "q", "t", "e", "_"]
    assert tones == [0, 1, 1, 0, 0, 0, 0]  # きって is accent type 1 (high, then falling)


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


def test_distribute_phone_fills_earlier_tokens_first():
    assert ja.distribute_phone(7, 3) == [3, 2, 2]
    assert ja.distribute_phone(1, 3) == [1, 0, 0]
    assert ja.distribute_phone(0, 2) == [0, 0]


def test_every_common_voice_transcript_converts(real_speech, minilm_tokenizer):
    rows = (real_speech / "ja_commonvoice" / "metadata.csv").read_text(encoding="utf-8").splitlines()
    texts = [line.split("|", 1)[1] for line in rows if "|" in line]
    assert texts
    for text in texts:
        norm = ja.normalize(text)
        phones, tones, word2ph = ja.g2p(norm, minilm_tokenizer)
        assert_invariants(norm, phones, tones, word2ph, minilm_tokenizer)
        assert len(phones) > 2, text


# --- upstream 2.3's rules, one by one (the gold file test_upstream_gold.py covers whole sentences)


@pytest.fixture(scope="module")
def ja_tokenizer():
    from transformers import AutoTokenizer

    from tests.tasks.frontends.test_upstream_gold import GOLD

    return AutoTokenizer.from_pretrained(str(GOLD / "tokenizers" / "deberta-v2-large-japanese-char-wwm"))


def test_hatsuon_is_lowercase_n_as_upstream_23_writes_it(ja_tokenizer):
    phones, _, _ = ja.g2p(ja.normalize("こんにちは"), ja_tokenizer)
    assert phones == ["_", "k", "o", "n", "n", "i", "ch", "i", "w", "a", "_"]


def test_vu_is_read_v_and_the_long_vowel_mark_repeats_the_vowel(ja_tokenizer):
    assert ja.g2p("ヴァイオリン", ja_tokenizer)[0][1:3] == ["v", "a"]
    assert ja.g2p("ケーキ", ja_tokenizer)[0] == ["_", "k", "e", "e", "k", "i", "_"]


def test_pitch_accent_gives_high_low_for_ame_rain_and_low_high_for_ame_candy(ja_tokenizer):
    assert ja.g2p("雨", ja_tokenizer)[1] == [0, 1, 0, 0, 0]  # a-me: atamadaka, falls after the first mora
    assert ja.g2p("飴", ja_tokenizer)[1] == [0, 0, 1, 1, 0]  # a-me: heiban, rises after the first mora


def test_normalize_deletes_latin_letters_and_percent_signs_as_upstream_does():
    assert ja.normalize("ABCテスト50%") == "テスト五十"


def test_a_sentence_upstream_cannot_convert_raises_a_clear_error(ja_tokenizer):
    with pytest.raises(ValueError, match="upstream 2.3 fails on this sentence too"):
        ja.g2p("ー", ja_tokenizer)  # a lone long-vowel mark has no vowel to lengthen


def test_align_tones_restarts_the_running_sum_after_an_unmatched_phone_and_shifts_by_one():
    # word 1: a(+1) then `,` (matches nothing) then i(-1): levels [1, 0, -1] -> shifted [0, 1, 0]
    # -> contains no -1 -> stays; word 2: u(0) -> [0].
    assert ja.align_tones([["a", ",", "i"], ["u"]], [("a", 1), ("i", -1), ("u", 0)]) == [0, 1, 0, 0]
    # a word whose shifted levels reach -1 is raised by one
    assert ja.align_tones([["a", "i", "u"]], [("a", -1), ("i", 0), ("u", 0)]) == [1, 0, 0]

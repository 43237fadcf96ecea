"""The English frontend: normalisation, CMUdict/g2p_en G2P and BERT alignment (upstream 2.3 rules)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tasks.frontends import backend_info, en
from tasks.frontends.symbols import BASE_SYMBOLS, PUNCTUATION

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

MIXED_TEXTS = [
    "Hello, world.",
    "In this paper, we propose 1 DSPGAN, a GAN-based universal vocoder.",
    "Sweynheim's 'quoted' don't café naïve résumé",
    "中文 and 日本語 mixed with English 😀 and Привет!",
    "Emoji only 🎉🎉 and a zero\u200bwidth space, a\ttab\nand a line.",
    "…!?,.'-",
    "C++ and e-mail at 3:30 pm; prices up 12.5%.",
    "",
    "   ",
]


def _check_invariants(phones: list[str], tones: list[int], word2ph: list[int], n_tokens: int) -> None:
    assert len(phones) == len(tones)
    assert sum(word2ph) == len(phones)
    assert len(word2ph) == n_tokens + 2
    assert phones[0] == phones[-1] == "_" and tones[0] == tones[-1] == 0
    assert word2ph[0] == word2ph[-1] == 1
    assert all(n >= 0 for n in word2ph)
    assert all(0 <= t < en.NUM_TONES for t in tones)
    assert set(phones) <= set(BASE_SYMBOLS)


# --- module contract ------------------------------------------------------------------------


def test_module_declares_version_and_four_language_local_tones():
    assert en.VERSION == "en-1"
    assert en.NUM_TONES == 4
    assert backend_info("en") == (4, "en-1")


# --- G2P: exact upstream phones and tones ---------------------------------------------------


def test_dictionary_sentence_gives_upstream_phones_tones_and_word2ph(minilm_tokenizer):
    # CMUdict: every EH1 V ER0 IY0, vote V OW1 T, counts K AW1 N T S. Upstream refine_ph: stress
    # d -> tone d + 1, no digit -> 3; post_replace_ph: lowercase, v -> V; punctuation tone 0.
    phones, tones, word2ph = en.g2p("Every vote counts.", minilm_tokenizer)
    assert phones == ["_", "eh", "V", "er", "iy", "V", "ow", "t", "k", "aw", "n", "t", "s", ".", "_"]
    assert tones == [0, 2, 3, 1, 1, 3, 2, 3, 3, 2, 3, 3, 3, 0, 0]
    assert word2ph == [1, 4, 3, 5, 1, 1]  # tokens: every / vote / counts / .


def test_first_cmudict_pronunciation_is_used(minilm_tokenizer):
    # hello has two entries (HH AH0 L OW1, HH EH0 L OW1): the first one wins, as in g2p_en.
    phones, tones, word2ph = en.g2p("Hello, world!", minilm_tokenizer)
    assert phones == ["_", "hh", "ah", "l", "ow", ",", "w", "er", "l", "d", "!", "_"]
    assert tones == [0, 3, 1, 3, 2, 0, 3, 2, 3, 3, 0, 0]
    assert word2ph == [1, 4, 1, 4, 1, 1]


def test_word_lookup_ignores_case():
    assert en.word_phones("WORLD") == en.word_phones("world") == (["w", "er", "l", "d"], [3, 2, 3, 3])


def test_phones_of_a_word_are_spread_over_its_wordpiece_tokens(minilm_tokenizer):
    # "vocoder" is vo ##code ##r for this tokenizer: its phones go 3 / 2 / 2 like upstream.
    assert minilm_tokenizer.tokenize("vocoder") == ["vo", "##code", "##r"]
    phones, _, word2ph = en.g2p("vocoder", minilm_tokenizer)
    n = len(phones) - 2
    assert word2ph == [1] + en.distribute_phone(n, 3) + [1]


@pytest.mark.parametrize("n_phone,n_token", [(0, 1), (1, 1), (5, 3), (3, 5), (7, 2), (12, 4), (0, 3)])
def test_distribute_phone_matches_upstream_round_robin(n_phone, n_token):
    upstream = [0] * n_token
    for _ in range(n_phone):  # upstream: each phone to the first token holding the fewest
        upstream[upstream.index(min(upstream))] += 1
    assert en.distribute_phone(n_phone, n_token) == upstream


# --- G2P: out-of-vocabulary words through g2p_en, offline -----------------------------------

_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, os, socket, sys
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in this test")

    socket.socket.connect = refuse
    socket.create_connection = refuse

    import nltk
    import nltk.downloader
    nltk.data.path[:] = [os.environ["NLTK_DATA"]]  # an empty folder: no corpus, no tagger
    original_download = nltk.download
    downloads = []
    nltk.downloader.Downloader.download = lambda self, *a, **k: downloads.append(a) or False

    from tasks.frontends import en
    loaded_at_import = sorted(m for m in ("g2p_en", "g2p_en.g2p") if m in sys.modules)

    class WhitespaceTokenizer:  # the slow path: one tokenize call per word
        def tokenize(self, text):
            return text.split()

    phones, tones, word2ph = en.g2p("dspgan", WhitespaceTokenizer())
    raw = en._predictor().predict("dspgan")
    print(json.dumps({
        "phones": phones, "tones": tones, "word2ph": word2ph, "predicted": raw,
        "in_lexicon": "dspgan" in en._lexicon(), "attempts": attempts, "downloads": downloads,
        "download_restored": nltk.download == original_download,
        "nltk_data": os.listdir(os.environ["NLTK_DATA"]), "loaded_at_import": loaded_at_import,
        "predictor_cached": en._predictor() is en._predictor(),
    }))
    """
)


def test_oov_word_goes_through_g2p_en_predictor_without_network_or_nltk_download(tmp_path):
    env = {**os.environ, "NLTK_DATA": str(tmp_path), "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "nltk_data" not in proc.stderr  # nltk prints "[nltk_data] Error loading ..." on a try
    assert out["attempts"] == [] and out["downloads"] == [] and out["nltk_data"] == []
    assert out["download_restored"]
    assert out["loaded_at_import"] == []  # g2p_en is loaded lazily, on the first OOV word
    assert out["predictor_cached"]
    assert not out["in_lexicon"]
    predicted = out["predicted"]
    assert predicted and all(p.rstrip("012") in {s.upper() for s in en.EN_SYMBOLS} for p in predicted)
    expected_phones = [p.rstrip("012").lower() for p in predicted]
    expected_phones = ["V" if p == "v" else p for p in expected_phones]
    expected_tones = [int(p[-1]) + 1 if p[-1].isdigit() else 3 for p in predicted]
    assert out["phones"] == ["_"] + expected_phones + ["_"]
    assert out["tones"] == [0] + expected_tones + [0]
    assert out["word2ph"] == [1, len(predicted), 1]


def test_oov_word_with_hyphen_keeps_dictionary_parts_and_the_hyphen_phone():
    phones, tones = en.word_phones("GAN-based")
    based = en.word_phones("based")
    assert "-" in phones and phones[phones.index("-") + 1:] == based[0]
    assert tones[phones.index("-")] == 0


@pytest.mark.parametrize("stem,suffix,suffix_tones", [
    ("gutenberg", ["z"], [3]),  # voiced ending
    ("gothic", ["s"], [3]),  # voiceless ending
    ("ulrich", ["ih", "z"], [1, 3]),  # sibilant ending
    ("bus", ["ih", "z"], [1, 3]),
])
def test_possessive_of_a_dictionary_word_adds_s_z_or_ih_z(stem, suffix, suffix_tones):
    assert stem in en._lexicon() and f"{stem}'s" not in en._lexicon()
    phones, tones = en.word_phones(stem)
    assert en.word_phones(f"{stem.title()}'s") == (phones + suffix, tones + suffix_tones)


def test_accented_letters_are_looked_up_without_accents():
    assert en.word_phones("café") == en.word_phones("cafe")


# --- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("I have 3 cats", "I have three cats"),
        ("1,234,567 people", "one million two hundred thirty four thousand five hundred sixty seven people"),
        ("pi is 3.14", "pi is three point one four"),
        ("about .5 of it", "about point five of it"),
        ("it is -5 outside", "it is minus five outside"),
        ("mp3 and 4K", "mp three and four K"),
        ("a 10-year plan", "a ten-year plan"),
        ("007", "seven"),
        ("12345678901234567890123", " ".join(
            ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero"] * 2
            + ["one", "two", "three"])),
    ],
)
def test_normalize_spells_out_numbers_and_decimals(raw, expected):
    assert en.normalize(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("In 1984.", "In nineteen eighty four."),
        ("in 1905", "in nineteen oh five"),
        ("in 1900", "in nineteen hundred"),
        ("in 2000", "in two thousand"),
        ("in 2005", "in two thousand five"),
        ("in 2010", "in twenty ten"),
        ("1,500 men", "one thousand five hundred men"),  # written with a comma: a count, not a year
        ("the 1980s", "the nineteen eighties"),
        ("the 90s", "the nineties"),
        ("at 3:05 and 10:30 and 7:00", "at three oh five and ten thirty and seven o'clock"),
    ],
)
def test_normalize_reads_years_decades_and_times(raw, expected):
    assert en.normalize(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("$5", "five dollars"),
        ("$1", "one dollar"),
        ("$3.50", "three dollars and fifty cents"),
        ("$0.01", "one cent"),
        ("$0", "zero dollars"),
        ("$1,250.99", "one thousand two hundred fifty dollars and ninety nine cents"),
        ("$2.5 million", "two point five million dollars"),
        ("£1", "one pound"),
        ("£3.20", "three pounds and twenty pence"),
        ("€10", "ten euros"),
        ("5€", "five euros"),
        ("12.5%", "twelve point five percent"),
        ("100 %", "one hundred percent"),
    ],
)
def test_normalize_reads_currency_and_percentages(raw, expected):
    assert en.normalize(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("1st", "first"),
        ("2nd", "second"),
        ("3rd", "third"),
        ("22nd", "twenty second"),
        ("101st", "one hundred first"),
        ("the 1,000th", "the one thousandth"),
    ],
)
def test_normalize_reads_ordinals(raw, expected):
    assert en.normalize(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Mr. Smith", "mister Smith"),
        ("Mrs. Smith", "missus Smith"),
        ("Dr. Who", "doctor Who"),
        ("Dr Who", "doctor Who"),
        ("St. Louis", "saint Louis"),
        ("on Main St.", "on Main street."),
        ("Capt. Hook", "captain Hook"),
        ("Smith Jr. arrived", "Smith junior arrived"),
        ("apples, pears, etc.", "apples, pears, et cetera."),
        ("cats vs. dogs", "cats versus dogs"),
        ("fruit, e.g. apples, i.e. food", "fruit, for example apples, that is food"),
        ("No. 5", "number five"),
        ("6 ft. tall", "six feet tall"),
        ("Ft. Worth", "fort Worth"),
        ("salt & pepper", "salt and pepper"),
        ("the gen alpha", "the gen alpha"),  # no period, not a capitalised title: left alone
    ],
)
def test_normalize_expands_common_abbreviations(raw, expected):
    assert en.normalize(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("He said “hi” (twice)", "He said 'hi' 'twice'"),
        ("Wait… what", "Wait... what"),
        ("yes—no", "yes-no"),
        ("one；two：three，four。", "one, two, three, four."),
        ("one; two: three", "one, two, three"),
        ("really！？", "really!?"),
        ("end.Start", "end. Start"),
        ("first line\nsecond line", "first line. second line"),
        ("done.\nnext", "done. next"),
        ("a   lot \t of   space", "a lot of space"),
    ],
)
def test_normalize_replaces_punctuation_like_upstream(raw, expected):
    assert en.normalize(raw) == expected


def test_normalize_is_idempotent_on_normalised_text():
    for raw in ["Mr. Smith paid $3.50 on the 22nd of May, 1984.", "He said “hi”… (twice)!"]:
        once = en.normalize(raw)
        assert en.normalize(once) == once


def test_normalize_only_leaves_letters_and_kept_punctuation_for_english_text():
    text = en.normalize("Dr. Smith (aged 42) paid £1,200.50 — 15% more — on 3/4 of the 1st day; wow!")
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ") | set(PUNCTUATION) | {"/"}


# --- punctuation and mixed scripts through G2P ------------------------------------------------


def test_punctuation_becomes_tone_zero_phones_one_per_token(minilm_tokenizer):
    text = en.normalize("Well… really?! Yes, 'no' - maybe.")
    phones, tones, word2ph = en.g2p(text, minilm_tokenizer)
    _check_invariants(phones, tones, word2ph, len(minilm_tokenizer.tokenize(text)))
    marks = [(p, t) for p, t in zip(phones, tones) if p in PUNCTUATION]
    assert [p for p, _ in marks] == [".", ".", ".", "?", "!", ",", "'", "'", "-", "."]
    assert all(t == 0 for _, t in marks)


def test_unmapped_symbols_are_dropped_not_turned_into_unk(minilm_tokenizer):
    phones, tones, word2ph = en.g2p("cats # dogs @ home", minilm_tokenizer)
    _check_invariants(phones, tones, word2ph, len(minilm_tokenizer.tokenize("cats # dogs @ home")))
    assert "UNK" not in phones and "#" not in phones and "@" not in phones


@pytest.mark.parametrize("text", MIXED_TEXTS)
def test_mixed_scripts_and_emoji_do_not_crash_and_keep_the_invariants(text, minilm_tokenizer):
    for candidate in (text, en.normalize(text)):
        phones, tones, word2ph = en.g2p(candidate, minilm_tokenizer)
        _check_invariants(phones, tones, word2ph, len(minilm_tokenizer.tokenize(candidate)))


def test_cjk_only_text_gets_zero_phones_per_token(minilm_tokenizer):
    phones, tones, word2ph = en.g2p("中文", minilm_tokenizer)
    assert phones == ["_", "_"] and tones == [0, 0]
    assert word2ph == [1, 0, 0, 1]


def test_slow_tokenizer_path_matches_the_fast_offsets_path(minilm_tokenizer):
    class TokenizeOnly:  # no offsets: g2p falls back to upstream's per-word tokenization
        def tokenize(self, text):
            return minilm_tokenizer.tokenize(text)

    for text in MIXED_TEXTS:
        norm = en.normalize(text)
        assert en.g2p(norm, TokenizeOnly()) == en.g2p(norm, minilm_tokenizer)


# --- every phone is a known symbol, on real transcripts ---------------------------------------


def _ljspeech_rows(shared_speech) -> list[tuple[str, str]]:
    path = shared_speech / "en_ljspeech" / "metadata.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    rows = [line.split("|") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row[0], row[1]) for row in rows]


def test_every_ljspeech_transcript_converts_with_known_symbols(shared_speech, minilm_tokenizer):
    rows = _ljspeech_rows(shared_speech)
    assert rows
    for utt_id, text in rows:
        norm = en.normalize(text)
        assert not any(c.isdigit() for c in norm), (utt_id, norm)
        phones, tones, word2ph = en.g2p(norm, minilm_tokenizer)
        _check_invariants(phones, tones, word2ph, len(minilm_tokenizer.tokenize(norm)))
        assert "UNK" not in phones, (utt_id, norm)
        assert len(phones) > 2, utt_id


def test_all_cmudict_phones_map_into_the_base_symbol_table():
    seen = {p for pron in en._lexicon().values() for p in pron}
    refined = {en._refine_phone(p)[0] for p in seen}
    assert refined <= set(en.EN_SYMBOLS)
    assert "UNK" not in refined


def test_lexicon_is_loaded_once():
    assert en._lexicon() is en._lexicon()

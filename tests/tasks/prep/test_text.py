from pathlib import Path

import pytest

from tasks.core.config import load_params
from tasks.core.hf import tokenizer_for
from tasks.frontends.symbols import BASE_SYMBOLS, SymbolTable
from tasks.prep.text import check_alignment, symbol_table, text_one

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


@pytest.mark.parametrize("language, text", [("zh", "你好，世界。"), ("ja", "こんにちは。"),
                                            ("en", "Hello, world."), ("de", "Guten Tag, Welt.")])
def test_text_one_gives_aligned_phones_for_every_registered_language(params, language, text):
    lang = params.languages[language]
    out = text_one(text, language, lang, tokenizer_for(REPO, lang.bert)).meta
    assert "reject" not in out, out
    assert out["phones"][0] == out["phones"][-1] == "_" and sum(out["word2ph"]) == len(out["phones"])


@pytest.mark.parametrize("language, reason", [("zh", "normalised text is empty"), ("en", "nothing speakable")])
def test_a_sentence_with_nothing_to_say_is_a_reject_not_a_crash(params, language, reason):
    lang = params.languages[language]
    result = text_one("🙂🙂", language, lang, tokenizer_for(REPO, lang.bert)).meta
    assert reason in result["reject"]


def test_a_g2p_failure_is_a_reject_naming_the_error(params):
    lang = params.languages["de"].model_copy(update={"g2p_options": {"voice": "not_a_voice"}})
    result = text_one("Guten Tag.", "de", lang, tokenizer_for(REPO, lang.bert)).meta
    assert result["reject"].startswith("g2p failed: RuntimeError")


@pytest.mark.parametrize("phones, tones, word2ph, n_tokens, why", [
    (["_", "a", "_"], [0, 1, 0], [1, 2, 1], 1, "word2ph sums to 4"),
    (["_", "a", "_"], [0, 1, 0], [1, 1, 1], 2, "expected BERT tokens + 2 = 4"),
    (["_", "a", "_"], [0, 1], [1, 1, 1], 1, "3 phones but 2 tones"),
    (["_", "a", "_"], [0, 9, 0], [1, 1, 1], 1, "tones outside 0..5"),
    (["_", "ʃ", "_"], [0, 1, 0], [1, 1, 1], 1, "not in the base symbol table"),
])
def test_alignment_checks_name_what_is_wrong(phones, tones, word2ph, n_tokens, why):
    assert why in check_alignment("zh", phones, tones, word2ph, n_tokens, num_tones=6)


def test_new_languages_append_symbols_tones_and_ids_after_the_base_table(params):
    table = symbol_table(params, {"de": {"ʃ", "a", "ç"}, "zh": {"a"}})
    assert table.symbols[:112] == BASE_SYMBOLS and table.symbols[112:] == ["ç", "ʃ"]  # "a" is a base symbol
    assert table.language_ids == {"zh": 0, "ja": 1, "en": 2, "de": 3}
    assert table.tone_offsets["de"] == 12 and table.num_tones == 15
    ids, tones, langs = table.to_ids(["_", "ʃ", "a", "_"], [0, 1, 0, 0], "de")
    assert ids == [0, 113, BASE_SYMBOLS.index("a"), 0] and tones == [12, 13, 12, 12] and langs == [3] * 4


def test_base_languages_map_to_upstream_ids():
    zh = SymbolTable().to_ids(["_", "n", "i", "_"], [0, 3, 3, 0], "zh")
    en = SymbolTable().to_ids(["_", "hh", "_"], [0, 3, 0], "en")
    assert zh[1] == [0, 3, 3, 0] and zh[2] == [0] * 4
    assert en[1] == [8, 11, 8] and en[2] == [2] * 3


def test_a_new_frontend_version_gives_new_text_cache_keys_only_for_its_language(params, monkeypatch):
    """Results cached under an older frontend's rules (e.g. `ja-1`) are never reused."""
    from tasks.frontends import ja
    from tasks.prep.text import plan_text

    rows = [{"language": "ja", "text": "こんにちは。"}, {"language": "en", "text": "Hello."}]
    before = [item.key for item in plan_text(rows, params, REPO)]
    monkeypatch.setattr(ja, "VERSION", "ja-1")
    after = [item.key for item in plan_text(rows, params, REPO)]
    assert before[0] != after[0] and before[1] == after[1]


def test_a_transcript_far_too_long_or_short_for_its_clip_is_a_reject_naming_the_rate(params):
    from tasks.prep.text import implausible_length

    phones = ["_"] + ["a", "b"] * 2041 + [".", "_"]  # 4,082 spoken phones
    two_and_a_half_s = int(2.5 * params.audio.sample_rate)
    why = implausible_length(phones, two_and_a_half_s, params)
    assert why == ("implausible transcript length: 4082 phones in 2.50 s = 1632.8 phones/s, outside "
                   "text.min/max_phones_per_second 1..40")
    assert "0.2 phones/s" in implausible_length(["_", "a", "_"], 5 * params.audio.sample_rate, params)
    assert implausible_length(["_"] + ["a"] * 30 + ["_"], two_and_a_half_s, params) is None  # 12 phones/s


def test_more_tokens_than_spectrogram_frames_is_a_reject(params):
    from tasks.prep.text import implausible_length

    p = params.model_copy(update={"text": params.text.model_copy(update={"max_phones_per_second": 1000.0})})
    frames = 50
    why = implausible_length(["_"] + ["a"] * 30 + ["_"], frames * p.features.spec.hop_length, p)
    assert why == f"implausible transcript length: 65 tokens (blanks included) but {frames} spectrogram frames"

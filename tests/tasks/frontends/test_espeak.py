"""The espeak-ng G2P backend, against the real espeak-ng binary (a system dependency)."""
import subprocess

import pytest

from tasks import frontends
from tasks.frontends import espeak

GERMAN = "Guten Tag! Ich habe 3 Äpfel und 12 Birnen gekauft – wirklich?"
SPANISH = "¿Cuántos años tienes? Tengo 25, ¡y tú también!"


def _check_invariants(text, tokenizer, phones, tones, word2ph):
    assert sum(word2ph) == len(phones) == len(tones)
    assert len(word2ph) == len(tokenizer.tokenize(text)) + 2
    assert phones[0] == phones[-1] == "_" and word2ph[0] == word2ph[-1] == 1
    assert all(0 <= t < espeak.NUM_TONES for t in tones)
    assert all(n >= 0 for n in word2ph)


def test_normalize_maps_punctuation_and_keeps_digits():
    assert espeak.normalize("  Ｈａｌｌｏ，\tWelt！！ „Ja“ — 3,5 % ¿Qué?  ") == "Hallo, Welt!! 'Ja' - 3,5 Qué?"
    assert espeak.normalize("Na ja... (gut); l’homme: 12") == "Na ja… 'gut', l'homme, 12"
    assert espeak.normalize("a#b *c*") == "a b c"


def test_normalize_is_the_basic_normalizer():
    assert frontends.normalize("basic", "Tag…") == "Tag…"


@pytest.mark.parametrize("voice, text", [("de", GERMAN), ("es", SPANISH)])
def test_g2p_invariants(minilm_tokenizer, voice, text):
    norm = espeak.normalize(text)
    phones, tones, word2ph = espeak.g2p(norm, minilm_tokenizer, voice)
    _check_invariants(norm, minilm_tokenizer, phones, tones, word2ph)
    assert [p for p in phones if p in espeak.PUNCTUATION] == [c for c in norm if c in espeak.PUNCTUATION]
    # punctuation is a phone of its own, tone 0, one per token
    assert all(t == 0 for p, t in zip(phones, tones) if p in espeak.PUNCTUATION)
    # espeak-ng reads the digits in the voice's language: "3" is German "drei", not "three"
    if voice == "de":
        assert "θ" not in phones and "aɪ" in phones


def test_g2p_through_the_registry(minilm_tokenizer):
    result = frontends.g2p("espeak", "Hallo, Welt.", minilm_tokenizer, voice="de")
    assert result.phones[0] == "_" and "," in result.phones
    assert frontends.backend_info("espeak") == (3, "espeak-1")


def test_phones_keep_length_marks_and_affricates(minilm_tokenizer):
    phones, tones, _ = espeak.g2p("Tag Pfütze", minilm_tokenizer, "de")
    assert phones == ["_", "t", "ɑː", "k", "pf", "y", "ts", "ə", "_"]
    # primary stress lands on the stressed vowel, not on a stress-mark phone
    assert tones == [0, 0, 1, 0, 0, 1, 0, 0, 0]
    assert "ˈ" not in "".join(phones) and "ˌ" not in "".join(phones)


def test_secondary_stress_gives_tone_2(minilm_tokenizer):
    phones, tones, _ = espeak.g2p("Überraschung", minilm_tokenizer, "de")
    assert 2 in tones and 1 in tones
    assert all(espeak._is_vowel(p) for p, t in zip(phones, tones) if t)


def test_language_switch_markers_are_dropped(minilm_tokenizer):
    phones, _, _ = espeak.g2p("weekend", minilm_tokenizer, "fr")  # espeak-ng reads it as English
    assert not any("(" in p or ")" in p for p in phones)


def test_one_espeak_process_per_sentence(minilm_tokenizer, monkeypatch):
    calls = []
    real_run = subprocess.run

    def counting_run(*args, **kwargs):
        calls.append(args)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(espeak.subprocess, "run", counting_run)
    espeak.g2p(espeak.normalize(GERMAN), minilm_tokenizer, "de")
    assert len(calls) == 1


def test_distribute_phone_matches_upstream():
    def upstream(n_phone, n_word):  # upstream Bert-VITS2's distribute_phone, verbatim in spirit
        counts = [0] * n_word
        for _ in range(n_phone):
            counts[counts.index(min(counts))] += 1
        return counts

    for n_phone in range(12):
        for n_token in range(1, 5):
            assert espeak.distribute_phone(n_phone, n_token) == upstream(n_phone, n_token)


def test_empty_text(minilm_tokenizer):
    assert espeak.g2p("", minilm_tokenizer, "de") == (["_", "_"], [0, 0], [1, 1])


def test_bad_voice_is_a_clear_error(minilm_tokenizer):
    # (a made-up name with a dash would not do: espeak-ng reads "no-such-voice" as Norwegian)
    with pytest.raises(RuntimeError, match="not_a_voice.*voice does not exist"):
        espeak.g2p("Hallo", minilm_tokenizer, "not_a_voice")


def test_missing_espeak_is_a_clear_error(minilm_tokenizer, monkeypatch):
    monkeypatch.setattr(espeak, "ESPEAK", "espeak-ng-not-installed")
    with pytest.raises(RuntimeError, match="'de'.*not installed"):
        espeak.g2p("Hallo", minilm_tokenizer, "de")


def test_tokenizer_that_splits_differently_in_context_is_refused():
    class Tokenizer:  # counts a word differently alone than inside the sentence
        def tokenize(self, text):
            return ["x"] * (3 if " " in text else 1)

    with pytest.raises(ValueError, match="cannot be aligned"):
        espeak.g2p("Hallo Welt", Tokenizer(), "de")

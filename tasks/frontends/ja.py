"""Japanese frontend: upstream Bert-VITS2 2.3 `text/japanese.py` rules on pyopenjtalk(-plus).

`normalize` turns raw text into kana/kanji/Latin/Greek plus the kept punctuation; `g2p` splits
it into OpenJTalk words, reads each word's katakana pronunciation as phones (long vowels as a
repeated vowel, `ッ` as `q`, `ン` as `N`), takes 0/1 pitch-accent tones from OpenJTalk's
full-context labels and spreads each word's phones over the BERT tokens of that word.
"""
from __future__ import annotations

import difflib
import re
import unicodedata
from typing import Any

import pyopenjtalk
from num2words import num2words

from tasks.frontends.symbols import PUNCTUATION

VERSION = "ja-1"
NUM_TONES = 2

_PUNCT = set(PUNCTUATION)
_LONG = "ー"

# --------------------------------------------------------------------------- normalisation

_CURRENCY = {"$": "ドル", "¥": "円", "£": "ポンド", "€": "ユーロ"}
_SEPARATED_NUMBER_RX = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+")
_CURRENCY_RX = re.compile(r"([$¥£€])([0-9.]*[0-9])")
_NUMBER_RX = re.compile(r"([0-9]+)(?:\.([0-9]+))?")
_DIGITS = "零一二三四五六七八九"

# `normalize` applies this after NFKC, where `：` and `；` have already become ASCII; upstream
# only lists the full-width forms and so deletes colons. The full-width keys still matter for
# OpenJTalk's word surfaces, which echo ASCII punctuation as full width (see `text_to_words`).
_PUNCT_MAP = {
    ":": ",", ";": ",", "，": ",", "、": ",", "·": ",", "・": ",",
    "。": ".", "．": ".", "\n": ".", "$": ".", "！": "!", "？": "?",
    "…": "...", "···": "...", "・・・": "...",
    "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "(": "'", ")": "'", "（": "'", "）": "'",
    "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'", "「": "'", "」": "'",
    "『": "'", "』": "'",
    "—": "-", "―": "-", "–": "-", "−": "-",
}  # fmt: skip
_PUNCT_MAP_RX = re.compile("|".join(re.escape(k) for k in sorted(_PUNCT_MAP, key=len, reverse=True)))
# Everything OpenJTalk can read, plus the kept punctuation: kana, kanji (and 々), Latin
# letters (half and full width), Greek.
_UNSUPPORTED_RX = re.compile(
    "[^\u3040-\u309f\u30a0-\u30ff\u4e00-\u9fff\u3400-\u4dbf\u3005"
    "A-Za-z\uff21-\uff3a\uff41-\uff5a\u0370-\u03ff\u1f00-\u1fff" + re.escape("".join(PUNCTUATION)) + "]+"
)


def _number_to_words(match: re.Match) -> str:
    """Integer part via num2words; decimals read digit by digit ("3.05" -> 三点零五).

    Upstream hands the whole decimal to num2words, which drops trailing zeros ("1.0" -> 一).
    """
    whole, frac = match[1], match[2]
    words = num2words(int(whole), lang="ja")
    return words if frac is None else words + "点" + "".join(_DIGITS[int(d)] for d in frac)


def convert_numbers(text: str) -> str:
    """`1,000` -> 千, `$5` -> 五ドル, `50%` -> 五十パーセント, `3.5` -> 三点五."""
    text = _SEPARATED_NUMBER_RX.sub(lambda m: m[0].replace(",", ""), text)
    text = _CURRENCY_RX.sub(lambda m: m[2] + _CURRENCY[m[1]], text)
    text = text.replace("%", "パーセント")  # upstream deletes `%`
    return _NUMBER_RX.sub(_number_to_words, text)


def replace_punctuation(text: str) -> str:
    """Map punctuation onto `! ? , . ' -` (`…` becomes `...`) and drop what OpenJTalk can't read."""
    return _UNSUPPORTED_RX.sub("", _PUNCT_MAP_RX.sub(lambda m: _PUNCT_MAP[m[0]], text))


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)  # full-width Latin/digits/punctuation -> ASCII
    text = convert_numbers(text)
    # Upstream reads wave dashes (~, and ～ which NFKC made ~) as the long-vowel mark; 〜 too.
    text = text.replace("~", _LONG).replace("〜", _LONG)
    text = replace_punctuation(text)
    # Combining (han)dakuten left by NFKC on e.g. "あ゛" would reach OpenJTalk bare.
    return text.replace("\u3099", "").replace("\u309a", "")


# --------------------------------------------------------------------------- kana -> phones

# Mora -> phones, from upstream `japanese_mora_list.py` (VOICEVOX/OpenJTalk's table, ン=N,
# ッ=q). Each row: consonant, then the kana of each vowel column a i u e o ("" = no such mora).
# fmt: off
_MORA_ROWS = [
    ("",   "アイウエオ"), ("k",  "カキクケコ"), ("g",  "ガギグゲゴ"), ("s",  "サ.スセソ"),
    ("z",  "ザ.ズゼゾ"), ("t",  "タ..テト"), ("d",  "ダ..デド"), ("n",  "ナニヌネノ"),
    ("h",  "ハヒ.ヘホ"), ("b",  "バビブベボ"), ("p",  "パピプペポ"), ("m",  "マミムメモ"),
    ("y",  "ヤ.ユ.ヨ"), ("r",  "ラリルレロ"), ("w",  "ワ..."), ("sh", ".シ..."), ("j",  ".ジ..."),
    ("ch", ".チ..."), ("ts", "..ツ.."), ("f",  "..フ.."), ("v",  "..ヴ.."),
]
_MORA_EXTRA = {  # yōon and loan-word morae: kana -> (consonant, vowel)
    **{f"{k}{s}": (c, v) for k, c in [("キ", "ky"), ("ギ", "gy"), ("ニ", "ny"), ("ヒ", "hy"),
                                     ("ビ", "by"), ("ピ", "py"), ("ミ", "my"), ("リ", "ry")]
       for s, v in [("ャ", "a"), ("ュ", "u"), ("ョ", "o"), ("ェ", "e")]},
    **{f"{k}{s}": (c, v) for k, c in [("シ", "sh"), ("ジ", "j"), ("チ", "ch")]
       for s, v in [("ャ", "a"), ("ュ", "u"), ("ョ", "o"), ("ェ", "e")]},
    **{f"テ{s}": ("ty", v) for s, v in [("ャ", "a"), ("ュ", "u"), ("ョ", "o")]},
    **{f"デ{s}": ("dy", v) for s, v in [("ャ", "a"), ("ュ", "u"), ("ョ", "o"), ("ェ", "e")]},
    **{f"ツ{s}": ("ts", v) for s, v in [("ァ", "a"), ("ィ", "i"), ("ェ", "e"), ("ォ", "o")]},
    **{f"フ{s}": ("f", v) for s, v in [("ァ", "a"), ("ィ", "i"), ("ェ", "e"), ("ォ", "o")]},
    **{f"ヴ{s}": ("v", v) for s, v in [("ァ", "a"), ("ィ", "i"), ("ェ", "e"), ("ォ", "o")]},
    **{f"ヴ{s}": ("by", v) for s, v in [("ャ", "a"), ("ュ", "u"), ("ョ", "o")]},
    **{f"ウ{s}": ("w", v) for s, v in [("ィ", "i"), ("ェ", "e"), ("ォ", "o")]},
    "ティ": ("t", "i"), "トゥ": ("t", "u"), "ディ": ("d", "i"), "ドゥ": ("d", "u"),
    "スィ": ("s", "i"), "ズィ": ("z", "i"), "イェ": ("y", "e"), "クヮ": ("kw", "a"), "グヮ": ("gw", "a"),
    # single kana outside the grid
    "ン": ("", "N"), "ッ": ("", "q"), "ヲ": ("", "o"), "ヱ": ("", "e"), "ヰ": ("", "i"),
    "ヂ": ("j", "i"), "ヅ": ("z", "u"), "ヶ": ("k", "e"), "ヮ": ("w", "a"),
    "ャ": ("y", "a"), "ュ": ("y", "u"), "ョ": ("y", "o"),
    "ァ": ("", "a"), "ィ": ("", "i"), "ゥ": ("", "u"), "ェ": ("", "e"), "ォ": ("", "o"),
}
# fmt: on
MORA_PHONES: dict[str, tuple[str, ...]] = {
    kana: ((c, v) if c else (v,))
    for c, kanas in _MORA_ROWS for kana, v in zip(kanas, "aiueo") if kana != "."
} | {kana: ((c, v) if c else (v,)) for kana, (c, v) in _MORA_EXTRA.items()}
# Longest match first, so キャ wins over キ + ャ.
_MORA_RX = re.compile("|".join(sorted(MORA_PHONES, key=len, reverse=True)) + "|" + _LONG)

# Upstream's table yields v / kw / gw (and so does OpenJTalk), but they are not in the 2.x symbol
# table; upstream would only fail later at id lookup. Map them onto the nearest symbol instead.
_OUT_OF_TABLE = {"v": "b", "kw": "k", "gw": "g"}


_HIRA_TO_KATA = str.maketrans({chr(c): chr(c + 0x60) for c in range(ord("ぁ"), ord("ゖ") + 1)})


def kata_to_phones(kata: str) -> list[str]:
    """Katakana -> phones; `ー` stays as a marker for `handle_long`, unknown characters are dropped.

    Hiragana is read as katakana in case a dictionary entry's reading contains any.
    """
    kata = kata.translate(_HIRA_TO_KATA)
    return [p for m in _MORA_RX.finditer(kata) for p in (MORA_PHONES.get(m[0]) or (_LONG,))]


def handle_long(words: list[list[str]]) -> list[list[str]]:
    """Replace each `ー` by the phone before it, across word boundaries (so `アー` -> a a).

    A `ー` with nothing before it (start of text) has nothing to lengthen and is dropped;
    upstream wraps around to the last phone of the text instead.
    """
    out: list[list[str]] = []
    prev: str | None = None
    for word in words:
        fixed = []
        for phone in word:
            if phone == _LONG:
                if prev is None:
                    continue
                phone = prev
            fixed.append(phone)
            prev = phone
        out.append(fixed)
    return out


def _word_phones(word: str, pron: str) -> list[str]:
    """Phones (with `ー` markers) of one OpenJTalk word, given its normalised surface and reading."""
    if word and all(ch in _PUNCT for ch in word):
        return list(word)  # punctuation is kept as phones, one per character
    if pron == "、" or not word:
        # OpenJTalk reads unknown characters (e.g. a lone 々, ゟ, rare Greek) as a pause; upstream
        # raises here. Such a word contributes no phones (its tokens get word2ph 0).
        return []
    return kata_to_phones(pron.replace("’", ""))  # ’ marks devoicing in the reading


def text_to_words(njd: list[dict]) -> tuple[list[str], list[list[str]]]:
    """OpenJTalk words -> (surface strings as they appear in the input, phones per word)."""
    surfaces = [f["string"] for f in njd]
    phones = [_word_phones(replace_punctuation(f["string"]), f["pron"]) for f in njd]
    return surfaces, handle_long(phones)


# --------------------------------------------------------------------------- pitch accent

_UNVOICED = {"A", "I", "U", "E", "O"}
_MORA_END = {"a", "i", "u", "e", "o", "A", "I", "U", "E", "O", "N", "cl"}


def _feature(regex: str, label: str) -> int:
    match = re.search(regex, label)
    return -50 if match is None else int(match[1])


def prosody_symbols(labels: list[str]) -> list[str]:
    """Phones interleaved with `#` (accent phrase border), `[` (rise), `]` (fall), `_` (pause).

    ESPnet's `pyopenjtalk_g2p_prosody` (used by upstream) with unvoiced vowels lowercased;
    the sentence start/end markers are left out since nothing reads them.
    """
    out: list[str] = []
    for n, label in enumerate(labels):
        phone = re.search(r"-(.*?)\+", label)[1]
        if phone == "sil":
            continue
        if phone == "pau":
            out.append("_")
            continue
        out.append(phone.lower() if phone in _UNVOICED else phone)
        a1 = _feature(r"/A:([0-9\-]+)\+", label)  # mora position relative to the accent nucleus
        a2 = _feature(r"\+(\d+)\+", label)  # mora position from the phrase start
        a3 = _feature(r"\+(\d+)/", label)  # mora position from the phrase end
        f1 = _feature(r"/F:(\d+)_", label)  # morae in the accent phrase
        a2_next = _feature(r"\+(\d+)\+", labels[n + 1])
        if a3 == 1 and a2_next == 1 and phone in _MORA_END:
            out.append("#")
        elif a1 == 0 and a2_next == a2 + 1 and a2 != f1:
            out.append("]")
        elif a2 == 1 and a2_next == 2:
            out.append("[")
    return out


def _phrase_tones(phrase: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Relative pitch levels of one accent phrase -> 0 (low) / 1 (high).

    Levels are {0}, {0, 1} (rise) or {-1, 0} (accent on the first mora: fall only); upstream
    maps these exactly like this and raises on anything else, which we clamp instead.
    """
    if not phrase:
        return []
    low = min(t for _, t in phrase)
    return [(p, min(t - low, 1)) for p, t in phrase]


def phone_tones(labels: list[str]) -> list[tuple[str, int]]:
    """(phone, tone) for every spoken phone, pauses and punctuation dropped, `cl` as `q`."""
    result: list[tuple[str, int]] = []
    phrase: list[tuple[str, int]] = []
    level = 0
    for sym in prosody_symbols(labels) + ["#"]:
        if sym in ("#", "_"):  # phrase ends: each phrase's pitch starts again from 0
            result += _phrase_tones(phrase)
            phrase, level = [], 0
        elif sym == "[":
            level += 1
        elif sym == "]":
            level -= 1
        else:
            phrase.append(("q" if sym == "cl" else sym, level))
    return result


def align_tones(phones: list[str], tones_src: list[tuple[str, int]]) -> list[int]:
    """Tones for `phones` (which include punctuation) taken from `tones_src` (which doesn't).

    Upstream walks both lists in step, gives punctuation tone 0 and raises on any mismatch.
    We match them with difflib instead: on agreeing inputs (the normal case) the result is the
    same, and where the word readings and the labels disagree (e.g. a `ー` OpenJTalk dropped)
    an unmatched phone keeps the tone of the phone before it rather than aborting.
    """
    spoken = [i for i, p in enumerate(phones) if p not in _PUNCT]
    tones = [0] * len(phones)
    matched: dict[int, int] = {}
    matcher = difflib.SequenceMatcher(None, [phones[i] for i in spoken], [p for p, _ in tones_src], autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            matched[spoken[a + k]] = tones_src[b + k][1]
    prev = 0
    for i in spoken:
        tones[i] = prev = matched.get(i, prev)
    return tones


# --------------------------------------------------------------------------- word2ph


def distribute_phone(n_phone: int, n_token: int) -> list[int]:
    """Spread phones over tokens as evenly as possible, earlier tokens first (upstream's rule)."""
    return [n_phone // n_token + (1 if i < n_phone % n_token else 0) for i in range(n_token)]


def tokens_per_word(text: str, surfaces: list[str], tokenizer: Any) -> list[int]:
    """How many of `tokenizer.tokenize(text)`'s tokens belong to each word.

    Upstream tokenises each word on its own, which only adds up to the whole-text count for a
    character-level tokenizer; a WordPiece tokenizer can glue adjacent kana words into one
    token or one [UNK]. Counting the tokens of each growing prefix of `text` gives the same
    numbers as upstream for character tokenizers and always sums to the whole-text count
    (counts are made non-decreasing and capped at the total).
    """
    total = len(tokenizer.tokenize(text))
    counts, end, best = [], 0, 0
    for surface in surfaces:
        end += len(surface)  # OpenJTalk keeps one surface character per input character
        best = max(best, len(tokenizer.tokenize(text[:end])) if end < len(text) else total)
        counts.append(min(best, total))
    if counts:
        counts[-1] = total
    return [c - p for c, p in zip(counts, [0] + counts[:-1])]


def word2ph_for(phone_counts: list[int], token_counts: list[int]) -> tuple[list[int], int]:
    """Per-token phone counts, and phones that found no token at all.

    A word with zero tokens (its characters were absorbed into a neighbour's token, or the
    tokenizer drops them) hands its phones to the nearest earlier word that has tokens, or the
    next one at the start of the text, so no phone is lost and no token is invented.
    """
    groups: list[list[int]] = []  # [phones, tokens]
    pending = 0
    for n_phone, n_token in zip(phone_counts, token_counts):
        if n_token:
            groups.append([n_phone + pending, n_token])
            pending = 0
        elif groups:
            groups[-1][0] += n_phone
        else:
            pending += n_phone
    return [n for p, t in groups for n in distribute_phone(p, t)], pending


# --------------------------------------------------------------------------- g2p


def g2p(norm_text: str, tokenizer: Any, use_jp_extra: bool = True) -> tuple[list[str], list[int], list[int]]:
    """Normalised text -> (phones, tones 0/1, word2ph), `_` at both ends.

    use_jp_extra=False writes `ン` as `n` (upstream's option for non-JP-Extra models).
    """
    njd = pyopenjtalk.run_frontend(norm_text)
    surfaces, word_phones = text_to_words(njd)
    phones = [p for word in word_phones for p in word]
    tones = align_tones(phones, phone_tones(pyopenjtalk.make_label(njd)) if njd else [])

    word2ph, orphans = word2ph_for([len(w) for w in word_phones], tokens_per_word(norm_text, surfaces, tokenizer))
    # Phones with no token anywhere (the whole text tokenised to nothing) ride on the leading `_`.
    word2ph = [1 + orphans] + word2ph + [1]

    phones = ["_"] + [_OUT_OF_TABLE.get(p, p) for p in phones] + ["_"]
    if not use_jp_extra:
        phones = ["n" if p == "N" else p for p in phones]
    tones = [0] + tones + [0]
    assert sum(word2ph) == len(phones) == len(tones), (norm_text, phones, word2ph)
    return phones, tones, word2ph

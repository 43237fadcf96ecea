"""Japanese frontend: the behaviour of upstream Bert-VITS2 2.3's `text/japanese.py`, on pyopenjtalk-plus.

Measured against upstream's own output (`tests/data/upstream_bv2_23/ja.json`, 102 sentences):
see `tests/tasks/frontends/test_upstream_gold.py` and the README's frontend section.

- `normalize`: NFKC, numbers read by num2words (`1,000` -> 千, `$5` -> 五ドル), punctuation mapped onto
  `! ? … , . ' -` and everything that is not kana, kanji, `々` or that punctuation deleted (Latin
  letters and `%` included, as upstream does).
- `g2p`: OpenJTalk's words; each word's katakana reading becomes phones through the kana table
  below (upstream's `hiragana2p`: `ン` is `n`, `ッ` `q`, a long vowel repeats its vowel); 0/1 tones
  from OpenJTalk's accent labels (upstream's `get_accent` + `align_tones`); each word's phones are
  spread over that word's tokens (`distribute_phone`).

Where upstream raises (a phone outside the symbol table, a tone outside 0/1) `g2p` raises a
`ValueError` saying so, and the `text` stage rejects the sentence. Where upstream's word-by-word
tokenisation cannot add up to the whole text's tokens (a WordPiece tokenizer such as the demo's
MiniLM, not upstream's character tokenizer), word2ph follows the whole text's tokens instead.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any

import pyopenjtalk
from num2words import num2words

from tasks.frontends.symbols import BASE_SYMBOLS, PUNCTUATION

VERSION = "ja-bv2.3-1"
NUM_TONES = 2

_SYMBOLS = frozenset(BASE_SYMBOLS)
_PUNCT = frozenset(PUNCTUATION)

# --------------------------------------------------------------------------- normalisation

# Applied left to right, earlier keys first at each position (so `・・・` wins over `・`).
_PUNCT_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "．": ".",
    "…": "...", "···": "...", "・・・": "...", "·": ",", "・": ",", "、": ",", "$": ".",
    "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'", "(": "'", ")": "'",
    "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'", "—": "-", "−": "-", "～": "-",
    "~": "-", "「": "'", "」": "'",
}  # fmt: skip
_PUNCT_MAP_RX = re.compile("|".join(re.escape(k) for k in _PUNCT_MAP))
# Kept: hiragana, katakana, CJK ideographs (and extension A), 々, and the punctuation symbols.
_DROP_RX = re.compile("[^\u3040-\u309f\u30a0-\u30ff\u4e00-\u9fff\u3400-\u4dbf\u3005" + re.escape("".join(PUNCTUATION)) + "]+")

_SEPARATED_NUMBER_RX = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+")
_CURRENCY = {"$": "ドル", "¥": "円", "£": "ポンド", "€": "ユーロ"}
_CURRENCY_RX = re.compile(r"([$¥£€])([0-9.]*[0-9])")
_NUMBER_RX = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def convert_numbers(text: str) -> str:
    """`1,000` -> 千, `$5` -> 五ドル, `3.5` -> 三点五 (num2words reads the digit string as given)."""
    text = _SEPARATED_NUMBER_RX.sub(lambda m: m[0].replace(",", ""), text)
    text = _CURRENCY_RX.sub(lambda m: m[2] + _CURRENCY[m[1]], text)
    return _NUMBER_RX.sub(lambda m: num2words(m[0], lang="ja"), text)


def replace_punctuation(text: str) -> str:
    """Map punctuation onto `! ? … , . ' -` and delete everything else that is not Japanese script."""
    return _DROP_RX.sub("", _PUNCT_MAP_RX.sub(lambda m: _PUNCT_MAP[m[0]], text))


def normalize(text: str) -> str:
    text = convert_numbers(unicodedata.normalize("NFKC", text))
    # NFKC turns a spacing dakuten into a space + combining U+3099, which survives the filter.
    return replace_punctuation(text).replace("\u3099", "")


# --------------------------------------------------------------------------- reading -> phones

# Upstream's kana table (`hiragana2p`, a modification of jaconv's `hiragana2julius`): applied as
# ordered replacements over the whole reading, three-kana rules first, then two, then one (so
# `くぅ゛` reads `k u v u`, not `k u: ...`). `:` lengthens the vowel before it by one.
# A key listed twice keeps its first value (the second replacement finds nothing left).
_KANA_RULES_TEXT = """
う゛ぁ v a|う゛ぃ v i|う゛ぇ v e|う゛ぉ v o|う゛ゅ by u|ゔぁ v a|ゔぃ v i|ゔぇ v e|ゔぉ v o|ゔゅ by u|ぅ゛ v u
あぁ a a|いぃ i i|いぇ i e|いゃ y a|うぅ u:|えぇ e e|おぉ o:|かぁ k a:|きぃ k i:|くぅ k u:|くゃ ky a
くゅ ky u|くょ ky o|けぇ k e:|こぉ k o:|がぁ g a:|ぎぃ g i:|ぐぅ g u:|ぐゃ gy a|ぐゅ gy u|ぐょ gy o
げぇ g e:|ごぉ g o:|さぁ s a:|しぃ sh i:|すぅ s u:|すゃ sh a|すゅ sh u|すょ sh o|せぇ s e:|そぉ s o:
ざぁ z a:|じぃ j i:|ずぅ z u:|ずゃ zy a|ずゅ zy u|ずょ zy o|ぜぇ z e:|ぞぉ z o:|たぁ t a:|ちぃ ch i:
つぁ ts a|つぃ ts i|つぅ ts u:|つゃ ch a|つゅ ch u|つょ ch o|つぇ ts e|つぉ ts o|てぇ t e:|とぉ t o:
だぁ d a:|ぢぃ j i:|づぅ d u:|づゃ zy a|づゅ zy u|づょ zy o|でぇ d e:|どぉ d o:|なぁ n a:|にぃ n i:
ぬぅ n u:|ぬゃ ny a|ぬゅ ny u|ぬょ ny o|ねぇ n e:|のぉ n o:|はぁ h a:|ひぃ h i:|ふぅ f u:|ふゃ hy a
ふゅ hy u|ふょ hy o|へぇ h e:|ほぉ h o:|ばぁ b a:|びぃ b i:|ぶぅ b u:|ぶゅ by u|べぇ b e:|ぼぉ b o:
ぱぁ p a:|ぴぃ p i:|ぷぅ p u:|ぷゃ py a|ぷゅ py u|ぷょ py o|ぺぇ p e:|ぽぉ p o:|まぁ m a:|みぃ m i:
むぅ m u:|むゃ my a|むゅ my u|むょ my o|めぇ m e:|もぉ m o:|やぁ y a:|ゆぅ y u:|ゆゃ y a:|ゆゅ y u:
ゆょ y o:|よぉ y o:|らぁ r a:|りぃ r i:|るぅ r u:|るゃ ry a|るゅ ry u|るょ ry o|れぇ r e:|ろぉ r o:
わぁ w a:|をぉ o:|う゛ b u|でぃ d i|でゃ dy a|でゅ dy u|でょ dy o|てぃ t i|てゃ ty a|てゅ ty u
てょ ty o|すぃ s i|ずぁ z u a|ずぃ z i|ずぇ z e|ずぉ z o|きゃ ky a|きゅ ky u|きょ ky o|しゃ sh a
しゅ sh u|しぇ sh e|しょ sh o|ちゃ ch a|ちゅ ch u|ちぇ ch e|ちょ ch o|とぅ t u|とゃ ty a|とゅ ty u
とょ ty o|どぁ d o a|どぅ d u|どゃ dy a|どゅ dy u|どょ dy o|にゃ ny a|にゅ ny u|にょ ny o|ひゃ hy a
ひゅ hy u|ひょ hy o|みゃ my a|みゅ my u|みょ my o|りゃ ry a|りゅ ry u|りょ ry o|ぎゃ gy a|ぎゅ gy u
ぎょ gy o|ぢぇ j e|ぢゃ j a|ぢゅ j u|ぢょ j o|じぇ j e|じゃ j a|じゅ j u|じょ j o|びゃ by a|びゅ by u
びょ by o|ぴゃ py a|ぴゅ py u|ぴょ py o|うぁ u a|うぃ w i|うぇ w e|うぉ w o|ふぁ f a|ふぃ f i|ふぇ f e
ふぉ f o
あ a|い i|う u|ゔ v u|え e|お o|か k a|き k i|く k u|け k e|こ k o|さ s a|し sh i|す s u|せ s e|そ s o
た t a|ち ch i|つ ts u|て t e|と t o|な n a|に n i|ぬ n u|ね n e|の n o|は h a|ひ h i|ふ f u|へ h e
ほ h o|ま m a|み m i|む m u|め m e|も m o|ら r a|り r i|る r u|れ r e|ろ r o|が g a|ぎ g i|ぐ g u
げ g e|ご g o|ざ z a|じ j i|ず z u|ぜ z e|ぞ z o|だ d a|ぢ j i|づ z u|で d e|ど d o|ば b a|び b i
ぶ b u|べ b e|ぼ b o|ぱ p a|ぴ p i|ぷ p u|ぺ p e|ぽ p o|や y a|ゆ y u|よ y o|わ w a|ゐ i|ゑ e|ん N
っ q|ぁ a|ぃ i|ぅ u|ぇ e|ぉ o|ゎ w a|ゃ y a|ゅ y u|ょ y o
"""
KANA_RULES: list[tuple[str, str]] = [
    (kana, " " + phones)
    for line in _KANA_RULES_TEXT.strip().splitlines() for rule in line.split("|")
    for kana, phones in [rule.split(" ", 1)]
] + [("ー", ":"), ("〜", ":"), ("−", ":"), ("-", ":"), ("を", " o")]
_LENGTHENED_RX = re.compile(r"(\w)(:*)")
# jaconv.kata2hira: katakana ァ..ヶ and ヽヾ shift down to hiragana; ヷ..ヺ, ・, ー stay.
_KATA_TO_HIRA = str.maketrans({c: c - 0x60 for c in [*range(0x30A1, 0x30F7), 0x30FD, 0x30FE]})


def hiragana_to_phones(text: str) -> str:
    """A hiragana reading -> space-separated phones (`ん` as `n`, `ー` repeats the vowel)."""
    for kana, phones in KANA_RULES:
        text = text.replace(kana, phones)
    text = _LENGTHENED_RX.sub(lambda m: m[1] + f" {m[1]}" * len(m[2]), text.strip())
    return text.replace("N", "n")


# A reading that starts with one of these is not a reading (punctuation, symbols).
_MARK_RX = re.compile(r"[^A-Za-z\d\u3005\u3040-\u30ff\u4e00-\u9fff\uff11-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9d]")
_LONG = "ー"


def reading_to_phones(reading: str) -> list[str]:
    """One word's katakana reading -> phones; a leading `ー` stays as a marker for `handle_long`.

    A reading that starts with a mark is kept whole as one entry, then read again from its
    second character (upstream's loop); a `ー` after such a mark is dropped."""
    text = reading.strip()
    if text == _LONG:
        return [_LONG]
    if text.startswith(_LONG):
        return [_LONG] + reading_to_phones(text[1:])
    phones: list[str] = []
    while text:
        if _MARK_RX.match(text):
            phones.append(text)
            text = text[1:]
        elif text.startswith(_LONG):
            text = text[1:]
        else:
            return phones + hiragana_to_phones(text.translate(_KATA_TO_HIRA)).split(" ")
    return phones


def handle_long(words: list[list[str]]) -> list[list[str]]:
    """Resolve `ー` markers: at a word's start it repeats the previous word's last phone (the first
    word wraps round to the text's last word, as upstream indexes [-1]); inside a word it repeats
    the last letter of the phone before it."""
    for i, word in enumerate(words):
        if word and word[0] == _LONG:
            word[0] = words[i - 1][-1] if words[i - 1] else _LONG
        for j, phone in enumerate(word):
            if phone == _LONG:
                word[j] = word[j - 1][-1]
    return words


# --------------------------------------------------------------------------- words

_NO_READING_WORDS = frozenset("「」『』―（）［］[]")


def split_words(njd: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """OpenJTalk's words -> (word as BERT sees it, its reading, its surface in the input text).

    A word whose reading is a mark (punctuation, unknown symbols) reads as itself: a word of one
    character keeps it if it is punctuation and becomes `,` otherwise; a longer one is split
    into its characters. The surface is what the word covers in the normalised text."""
    words, readings, surfaces = [], [], []
    for feature in njd:
        surface = feature["string"]
        word, reading = replace_punctuation(surface), feature["pron"].replace("’", "")
        if reading and _MARK_RX.match(reading):
            if len(word) > 1:
                chars = [replace_punctuation(c) for c in word]
                words += chars
                readings += chars
                surfaces += list(surface) if len(surface) == len(chars) else [surface] + [""] * (len(chars) - 1)
                continue
            if word not in _PUNCT_MAP and word not in _PUNCT_MAP.values():
                word = ","
            reading = word
        elif not reading:
            if word in ("っ", "ッ"):
                reading = "ッ"
            elif word in _NO_READING_WORDS:
                reading = ""  # unreachable after `normalize` (those brackets become `'`)
            else:
                reading = word  # symbols read as themselves; anything else fails the symbol check
        words.append(word)
        readings.append(reading)
        surfaces.append(surface)
    return words, readings, surfaces


def bert_text(text: str) -> str:
    """The text upstream's japanese_bert.py feeds its tokenizer: "".join(text2sep_kata(text)[0]),
    OpenJTalk's words as `split_words` maps them (what a style text, not normalised, becomes)."""
    return "".join(split_words(pyopenjtalk.run_frontend(text))[0])


# --------------------------------------------------------------------------- pitch accent

_PHONE_RX = re.compile(r"-([^+]*)\+")
_A1_RX = re.compile(r"/A:(-?[0-9]+)\+")
_A2_RX = re.compile(r"\+(\d+)\+")


def accents(labels: list[str]) -> list[tuple[str, int]]:
    """(phone, accent) for every spoken phone of OpenJTalk's labels: -1 where the pitch falls after
    the accent nucleus, +1 where it rises after a phrase's first mora, 0 elsewhere.

    Phones are lower-cased (devoiced `I` is `i`, `N` is `n`) and `cl` is `q`, so they match the
    reading's phones."""
    out = []
    for n, label in enumerate(labels):
        phone = _PHONE_RX.search(label)[1]
        if phone in ("sil", "pau"):
            continue
        a1, a2 = int(_A1_RX.search(label)[1]), int(_A2_RX.search(label)[1])
        following = labels[n + 1]
        a2_next = -1 if _PHONE_RX.search(following)[1] in ("sil", "pau") else int(_A2_RX.search(following)[1])
        accent = -1 if a1 == 0 and a2_next == a2 + 1 else 1 if a2 == 1 and a2_next == 2 else 0
        out.append((phone.replace("cl", "q").lower(), accent))
    return out


def align_tones(words: list[list[str]], accent: list[tuple[str, int]]) -> list[int]:
    """0/1 tone per phone from the accents, word by word (upstream's `align_tones`).

    Within a word each phone that matches the next accent entry takes the running sum of the
    accents (a phone that matches nothing, e.g. punctuation, gets 0 and restarts the sum); the
    levels then shift one phone later, and a word whose levels reach -1 is raised by one."""
    queue = list(reversed(accent))
    tones: list[int] = []
    for word in words:
        levels = [0] * len(word)
        for i, phone in enumerate(word):
            if not queue:
                break
            if phone == queue[-1][0]:
                levels[i] = queue.pop()[1] + (levels[i - 1] if i > 0 else 0)
        levels = ([0] + levels)[: len(word)]
        if -1 in levels:
            levels = [t + 1 for t in levels]
        tones += levels
    bad = sorted({t for t in tones if t not in (0, 1)})
    if bad:
        raise ValueError(f"ja g2p: pitch levels {bad} outside 0/1 (upstream 2.3 fails on this sentence too)")
    return tones


# --------------------------------------------------------------------------- word2ph


def distribute_phone(n_phone: int, n_token: int) -> list[int]:
    """A word's phones over its tokens as evenly as possible, earlier tokens first (5/3 -> 2 2 1)."""
    base, extra = divmod(n_phone, n_token)
    return [base + (1 if i < extra else 0) for i in range(n_token)]


def _prefix_token_counts(text: str, surfaces: list[str], tokenizer: Any, total: int) -> list[int]:
    """Tokens per word from the tokens of each growing prefix of `text`: sums to `total` for any
    tokenizer (a WordPiece tokenizer may glue neighbouring words into one token)."""
    counts, end, best = [], 0, 0
    for surface in surfaces:
        end += len(surface)
        best = max(best, len(tokenizer.tokenize(text[:end])) if end < len(text) else total)
        counts.append(min(best, total))
    if counts:
        counts[-1] = total
    return [c - p for c, p in zip(counts, [0] + counts[:-1])]


def word2ph_for(phone_counts: list[int], token_counts: list[int]) -> list[int]:
    """Per-token phone counts. A word with phones but no token (upstream fails on it) hands its
    phones to the nearest earlier word with tokens, or the next one at the start."""
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
    if pending:
        raise ValueError("ja g2p: the tokenizer gives the text no tokens to carry its phones")
    return [n for p, t in groups for n in distribute_phone(p, t)]


# --------------------------------------------------------------------------- g2p


def g2p(norm_text: str, tokenizer: Any) -> tuple[list[str], list[int], list[int]]:
    """Normalised text -> (phones, tones 0/1, word2ph), `_` at both ends."""
    njd = pyopenjtalk.run_frontend(norm_text)
    words, readings, surfaces = split_words(njd)
    word_phones = handle_long([reading_to_phones(r) for r in readings])
    unknown = sorted({p for w in word_phones for p in w} - _SYMBOLS)
    if unknown:
        raise ValueError(f"ja g2p: no phone for {unknown} (upstream 2.3 fails on this sentence too)")
    tones = align_tones(word_phones, accents(pyopenjtalk.make_label(njd)) if njd else [])

    # Upstream tokenises word by word (a punctuation word is one token). With a character-level
    # tokenizer (upstream's) that adds up to the whole text's tokens, which the BERT stage reads.
    token_counts = [1 if w in _PUNCT else len(tokenizer.tokenize(w)) for w in words]
    total = len(tokenizer.tokenize(norm_text))
    if sum(token_counts) != total:
        token_counts = _prefix_token_counts(norm_text, surfaces, tokenizer, total)
    word2ph = [1] + word2ph_for([len(w) for w in word_phones], token_counts) + [1]

    phones = ["_"] + [p for w in word_phones for p in w] + ["_"]
    tones = [0] + tones + [0]
    assert sum(word2ph) == len(phones) == len(tones), (norm_text, phones, word2ph)
    return phones, tones, word2ph

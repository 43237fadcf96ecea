"""Mandarin frontend: text normalisation and G2P with upstream Bert-VITS2 2.3's rules.

`g2p` reproduces upstream `text/chinese.py` + `text/tone_sandhi.py` (itself from PaddleSpeech):
jieba segmentation, pypinyin initials/finals, tone sandhi for 不/一/third tones/neutral tones,
and the opencpop-strict pinyin-to-phone table. Phones and tones must match upstream exactly,
because pretrained checkpoints were trained on them.
"""
from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from pathlib import Path

from tasks.frontends.symbols import PUNCTUATION

VERSION = "zh-1"
NUM_TONES = 6  # 0 for punctuation and padding, 1-4 lexical tones, 5 neutral tone


# jieba's tagger, pypinyin and cn2an take about 0.7 s to import: they load on first use, so a stage
# run with no new Mandarin text (its cache key needs only VERSION) does not pay for them.
@functools.cache
def _jieba():
    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)  # jieba logs its dictionary loading on first use
    return jieba


def _an2cn(number: str) -> str:
    import cn2an

    return cn2an.an2cn(number)


def _pinyin(word: str, style: str) -> list[str]:
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin(word, neutral_tone_with_five=True, style=getattr(Style, style))


_DATA = Path(__file__).parent / "data"
Segment = tuple[str, str]  # (word, jieba part-of-speech tag)

# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

_DIGITS = "零一二三四五六七八九"
_MAX_CN2AN_DIGITS = 16  # cn2an refuses longer integers

# Full-width and typographic variants of the characters the number rules look for
# (so ２０％ and −5 are read; upstream drops them).
_HALF_WIDTH = str.maketrans({**{chr(0xFF10 + i): str(i) for i in range(10)},
                             "％": "%", "￥": "¥", "＄": "$", "－": "-", "−": "-", "／": "/"})

_CURRENCY_UNITS = {"¥": "元", "$": "美元", "€": "欧元", "£": "英镑"}

# Upstream's punctuation map, plus ASCII ':' and ';' (upstream maps only their full-width forms
# and silently drops the ASCII ones).
_PUNCTUATION_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",",
    "...": "…", "$": ".", "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'",
    "(": "'", ")": "'", "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'", "—": "-",
    "～": "-", "~": "-", "「": "'", "」": "'", ":": ",", ";": ",",
}
_PUNCTUATION_RE = re.compile("|".join(re.escape(p) for p in _PUNCTUATION_MAP))
# Upstream's character set: CJK unified ideographs (basic block) and the model's punctuation.
_ALLOWED_CLASS = "\u4e00-\u9fa5" + re.escape("".join(PUNCTUATION))
_DISALLOWED_RE = re.compile(f"[^{_ALLOWED_CLASS}]+")
# Interjections pypinyin reads as bare nasals, which have no phones; upstream swaps in a
# homophone with a full syllable.
_INTERJECTIONS = str.maketrans({"嗯": "恩", "呣": "母"})


def _read_digits(digits: str, phone_style: bool = False) -> str:
    """Digit by digit, as codes and phone numbers are read; phone numbers say 幺 for 1."""
    spoken = "".join(_DIGITS[int(d)] for d in digits)
    return spoken.replace("一", "幺") if phone_style else spoken


def _read_number(number: str) -> str:
    """An unsigned integer or decimal as a quantity; codes with leading zeros digit by digit."""
    integer, _, fraction = number.partition(".")
    if (len(integer) > 1 and integer.startswith("0")) or len(integer) > _MAX_CN2AN_DIGITS:
        return _read_digits(integer) + ("点" + _read_digits(fraction) if fraction else "")
    return _an2cn(number)


def _read_small(number: str) -> str:
    """A month, day, hour or minute: leading zeros are not spoken (03月 -> 三月)."""
    return _an2cn(str(int(number)))


def _read_date(m: re.Match) -> str:
    year, month, day = m.group("year", "month", "day")
    if not (1 <= int(month) <= 12 and 1 <= int(day) <= 31):
        return m.group(0)
    return f"{_read_digits(year)}年{_read_small(month)}月{_read_small(day)}日"


def _read_clock_minutes(number: str) -> str:
    """Minutes and seconds keep a spoken zero below ten: 10:05 -> 十点零五分."""
    value = int(number)
    return ("零" if 0 < value < 10 else "") + _an2cn(str(value))


def _read_time(m: re.Match) -> str:
    hour, minute, second = m.group("hour", "minute", "second")
    spoken = ("两" if int(hour) == 2 else _read_small(hour)) + "点"  # 两点, not 二点
    if int(minute) or second:
        spoken += _read_clock_minutes(minute) + "分"
    if second:
        spoken += _read_clock_minutes(second) + "秒"
    return spoken


def _read_phone(m: re.Match) -> str:
    # Separators stay: '-' is kept punctuation and gives the pause people make there.
    return re.sub(r"\d+", lambda d: _read_digits(d.group(0), phone_style=True), m.group(0))


def _read_percent(m: re.Match) -> str:
    return "百分之" + _read_number(m.group("number"))


def _read_currency(m: re.Match) -> str:
    return _read_number(m.group("number")) + _CURRENCY_UNITS[m.group("symbol")]


def _read_fraction(m: re.Match) -> str:
    return f"{_read_number(m.group('denominator'))}分之{_read_number(m.group('numerator'))}"


_NUMBER = r"\d+(?:\.\d+)?"
# Applied in order: the specific patterns claim their digits before the generic number rule.
_NUMBER_RULE_SOURCES: list[tuple[str, Callable[[re.Match], str] | str]] = [
    # thousands separators: 1,234,567 -> 1234567
    (r"(?<=\d),(?=\d{3}(?!\d))", ""),
    # 2024-03-05, 2024/3/5, 2024.03.05, 2024年3月5日
    (r"(?<!\d)(?P<year>\d{4})\s*[-/.年]\s*(?P<month>\d{1,2})\s*[-/.月]\s*(?P<day>\d{1,2})(?!\d)[日号]?",
     _read_date),
    # a four-digit year is read digit by digit: 2024年 -> 二零二四年
    (r"(?<!\d)\d{4}(?=年)", lambda m: _read_digits(m.group(0))),
    # a lone month or day: 03月 -> 三月
    (r"(?<!\d)\d{1,2}(?=[月日号])", lambda m: _read_small(m.group(0))),
    # 10:30, 08:05:09, 10：30
    (r"(?<!\d)(?P<hour>[01]?\d|2[0-4])[:：](?P<minute>[0-5]\d)(?:[:：](?P<second>[0-5]\d))?(?!\d)", _read_time),
    # mobile numbers, area code + number, and dash-grouped numbers (400-800-1234)
    (r"(?<!\d)(?:1[3-9]\d{9}|0\d{2,3}-\d{7,8}|\d{3}-\d{3,4}-\d{4})(?!\d)", _read_phone),
    # '-' is a minus sign unless it joins two numbers or letters (3-5, A-1)
    (r"(?<![0-9A-Za-z])-(?=\d)", "负"),
    (rf"(?P<number>{_NUMBER})\s*%", _read_percent),
    (rf"(?P<symbol>[¥$€£])\s*(?P<number>{_NUMBER})", _read_currency),
    (r"(?<![\d/])(?P<numerator>\d+)/(?P<denominator>\d+)(?![\d/])", _read_fraction),
    (_NUMBER, lambda m: _read_number(m.group(0))),
]
# ASCII-only: \d means 0-9 (digits of other scripts are dropped later with other symbols).
_NUMBER_RULES = [(re.compile(pattern, re.ASCII), replacement)
                 for pattern, replacement in _NUMBER_RULE_SOURCES]


def _verbalize_numbers(text: str) -> str:
    for pattern, replacement in _NUMBER_RULES:
        text = pattern.sub(replacement, text)
    return text


def _replace_punctuation(text: str) -> str:
    """Upstream's replace_punctuation: map to the model's punctuation, drop everything else."""
    text = text.translate(_INTERJECTIONS)
    text = _PUNCTUATION_RE.sub(lambda m: _PUNCTUATION_MAP[m.group(0)], text)
    return _DISALLOWED_RE.sub("", text)


def normalize(text: str) -> str:
    """Spell out numbers, dates, times, percentages and currency in Chinese, map punctuation.

    The result holds only CJK ideographs and the model's punctuation, one BERT token each.
    """
    return _replace_punctuation(_verbalize_numbers(text.translate(_HALF_WIDTH)))


# ---------------------------------------------------------------------------------------------
# Tone sandhi (upstream ToneSandhi). Finals are pypinyin FINALS_TONE3 strings such as "ao3",
# whose last character is the tone, 5 for neutral.
# ---------------------------------------------------------------------------------------------

_NEUTRAL_TONE_WORDS = frozenset(
    word for line in (_DATA / "zh-neutral-tone-words.txt").read_text(encoding="utf-8").splitlines()
    if not line.startswith("#") for word in line.split()
)
# Words that look like they take a neutral suffix (…子, reduplication) but keep the full tone.
_NOT_NEUTRAL_TONE_WORDS = frozenset({"男子", "女子", "分子", "原子", "量子", "莲子", "石子", "瓜子", "电子", "人人", "虎虎"})
_SENTENCE_FINAL_PARTICLES = "吧呢啊呐噻嘛吖嗨呐哦哒额滴哩哟喽啰耶喔诶"
# After these, 一 keeps its first tone (a pause follows).
_YI_PAUSE_PUNCTUATION = "：，；。？！“”‘’':,;.?!"


def _finals(word: str) -> list[str]:
    return _pinyin(word, "FINALS_TONE3")


def _initials(word: str) -> list[str]:
    return _pinyin(word, "INITIALS")


def _tone(final: str) -> str:
    return final[-1:]


def _with_tone(final: str, tone: str) -> str:
    return final[:-1] + tone


def _all_third_tone(finals: list[str]) -> bool:
    return all(_tone(f) == "3" for f in finals)


def _is_reduplication(word: str) -> bool:
    return len(word) == 2 and word[0] == word[1]


def _split_word(word: str) -> tuple[str, str]:
    """Split a word in two around its shortest jieba search sub-word, as upstream does.

    Only the first part's length and each part's membership in the word lists are used, so
    when the sub-word sits mid-word the parts need not concatenate back to the word.
    """
    shortest = sorted(_jieba().cut_for_search(word), key=len)[0]
    if word.startswith(shortest):
        return shortest, word[len(shortest):]
    return word[: -len(shortest)], shortest


def _is_neutral_tone_word(word: str) -> bool:
    return word in _NEUTRAL_TONE_WORDS or word[-2:] in _NEUTRAL_TONE_WORDS


def _neutral_sandhi(word: str, pos: str, finals: list[str]) -> list[str]:
    finals = list(finals)
    # reduplicated nouns, verbs and adjectives: 奶奶, 试试
    for j in range(1, len(word)):
        if word[j] == word[j - 1] and pos[0] in "nva" and word not in _NOT_NEUTRAL_TONE_WORDS:
            finals[j] = _with_tone(finals[j], "5")
    ge = word.find("个")
    if word[-1] in _SENTENCE_FINAL_PARTICLES or word[-1] in "的地得":
        finals[-1] = _with_tone(finals[-1], "5")
    elif len(word) > 1 and word[-1] in "们子" and pos in {"r", "n"} and word not in _NOT_NEUTRAL_TONE_WORDS:
        finals[-1] = _with_tone(finals[-1], "5")
    elif len(word) > 1 and word[-1] in "上下里" and pos in {"s", "l", "f"}:  # 桌上, 地下, 家里
        finals[-1] = _with_tone(finals[-1], "5")
    elif len(word) > 1 and word[-1] in "来去" and word[-2] in "上下进出回过起开":  # 上来, 下去
        finals[-1] = _with_tone(finals[-1], "5")
    elif (ge >= 1 and (word[ge - 1].isnumeric() or word[ge - 1] in "几有两半多各整每做是")) or word == "个":
        finals[ge] = _with_tone(finals[ge], "5")  # 个 as a measure word
    elif _is_neutral_tone_word(word):
        finals[-1] = _with_tone(finals[-1], "5")
    # the same word-list check on each half of the word
    first, second = _split_word(word)
    halves = [finals[: len(first)], finals[len(first):]]
    for part, part_finals in zip((first, second), halves):
        if _is_neutral_tone_word(part):
            part_finals[-1] = _with_tone(part_finals[-1], "5")
    return halves[0] + halves[1]


def _bu_sandhi(word: str, finals: list[str]) -> list[str]:
    finals = list(finals)
    if len(word) == 3 and word[1] == "不":  # 看不懂: 不 is neutral between verb and complement
        finals[1] = _with_tone(finals[1], "5")
        return finals
    for i in range(len(word) - 1):
        if word[i] == "不" and _tone(finals[i + 1]) == "4":  # 不怕: bu2 before a fourth tone
            finals[i] = _with_tone(finals[i], "2")
    return finals


def _yi_sandhi(word: str, finals: list[str]) -> list[str]:
    finals = list(finals)
    if "一" in word and all(ch.isnumeric() for ch in word if ch != "一"):
        return finals  # a digit in a number: 一零零, 二一零
    if len(word) == 3 and word[1] == "一" and word[0] == word[-1]:  # 看一看
        finals[1] = _with_tone(finals[1], "5")
    elif word.startswith("第一"):  # ordinal keeps yi1
        finals[1] = _with_tone(finals[1], "1")
    else:
        for i in range(len(word) - 1):
            if word[i] != "一":
                continue
            if _tone(finals[i + 1]) == "4":  # 一段: yi2 before a fourth tone
                finals[i] = _with_tone(finals[i], "2")
            elif word[i + 1] not in _YI_PAUSE_PUNCTUATION:  # 一天: yi4 before other tones
                finals[i] = _with_tone(finals[i], "4")
    return finals


def _third_tone_sandhi(word: str, finals: list[str]) -> list[str]:
    """A third tone before a third tone becomes second, grouping syllables by sub-word."""
    finals = list(finals)
    if len(word) == 2 and _all_third_tone(finals):
        finals[0] = _with_tone(finals[0], "2")
    elif len(word) == 3:
        first, _ = _split_word(word)
        if _all_third_tone(finals):
            if len(first) == 2:  # 蒙古/包
                finals[0], finals[1] = _with_tone(finals[0], "2"), _with_tone(finals[1], "2")
            elif len(first) == 1:  # 纸/老虎
                finals[1] = _with_tone(finals[1], "2")
        else:
            halves = [finals[: len(first)], finals[len(first):]]
            for i, half in enumerate(halves):
                if len(half) == 2 and _all_third_tone(half):  # 所有/人
                    half[0] = _with_tone(half[0], "2")
                elif (i == 1 and not _all_third_tone(half)
                      and _tone(half[0]) == "3" and _tone(halves[0][-1]) == "3"):
                    halves[0][-1] = _with_tone(halves[0][-1], "2")  # 好/喜欢
            finals = halves[0] + halves[1]
    elif len(word) == 4:  # idioms: two words of two syllables
        halves = [finals[:2], finals[2:]]
        for half in halves:
            if _all_third_tone(half):
                half[0] = _with_tone(half[0], "2")
        finals = halves[0] + halves[1]
    return finals


def _apply_sandhi(word: str, pos: str, finals: list[str]) -> list[str]:
    finals = _bu_sandhi(word, finals)
    finals = _yi_sandhi(word, finals)
    finals = _neutral_sandhi(word, pos, finals)
    return _third_tone_sandhi(word, finals)


# Segment merges run before sandhi: jieba often cuts off 不, 一, 儿 or splits a run of third
# tones, which would hide the context the sandhi rules need.

def _merge_bu(seg: list[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    pending_bu = False
    for word, pos in seg:
        if pending_bu:
            word = "不" + word
        pending_bu = word == "不"
        if not pending_bu:
            merged.append((word, pos))
    if pending_bu:
        merged.append(("不", "d"))
    return merged


def _merge_yi(seg: list[Segment]) -> list[Segment]:
    # verb 一 verb (听一听) becomes one word
    merged: list[Segment] = []
    i = 0
    while i < len(seg):
        word, pos = seg[i]
        if (word == "一" and merged and merged[-1] == seg[i - 1] and i + 1 < len(seg)
                and seg[i - 1][1] == "v" and seg[i - 1][0] == seg[i + 1][0]):
            verb = seg[i - 1][0]
            merged[-1] = (verb + "一" + verb, "v")
            i += 2
        else:
            merged.append((word, pos))
            i += 1
    # a lone 一 joins the word after it
    result: list[Segment] = []
    for word, pos in merged:
        if result and result[-1][0] == "一":
            result[-1] = ("一" + word, result[-1][1])
        else:
            result.append((word, pos))
    return result


def _merge_reduplication(seg: list[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for word, pos in seg:
        if merged and merged[-1][0] == word:
            merged[-1] = (word + word, merged[-1][1])
        else:
            merged.append((word, pos))
    return merged


def _merge_third_tones(seg: list[Segment], joinable: Callable[[list[str], list[str]], bool]) -> list[Segment]:
    """Join neighbours whose finals are `joinable` into words of at most three syllables.

    A reduplicated word is left alone: it needs the neutral-tone rule instead.
    """
    finals = [_finals(word) for word, _ in seg]
    merged: list[Segment] = []
    merged_last = False
    for i, (word, pos) in enumerate(seg):
        previous = seg[i - 1][0] if i else ""
        if (i and not merged_last and joinable(finals[i - 1], finals[i])
                and not _is_reduplication(previous) and len(previous) + len(word) <= 3):
            merged[-1] = (merged[-1][0] + word, merged[-1][1])
            merged_last = True
        else:
            merged.append((word, pos))
            merged_last = False
    return merged


def _merge_er(seg: list[Segment]) -> list[Segment]:
    # erhua: 儿 belongs to the word before it
    merged: list[Segment] = []
    for word, pos in seg:
        if merged and word == "儿":
            merged[-1] = (merged[-1][0] + word, merged[-1][1])
        else:
            merged.append((word, pos))
    return merged


def _merge_for_sandhi(seg: list[Segment]) -> list[Segment]:
    seg = _merge_bu(seg)
    seg = _merge_yi(seg)
    seg = _merge_reduplication(seg)
    seg = _merge_third_tones(seg, lambda a, b: _all_third_tone(a) and _all_third_tone(b))
    seg = _merge_third_tones(seg, lambda a, b: _tone(a[-1]) == "3" and _tone(b[0]) == "3")
    return _merge_er(seg)


# ---------------------------------------------------------------------------------------------
# Pinyin to phones
# ---------------------------------------------------------------------------------------------

_PINYIN_TO_PHONES: dict[str, list[str]] = {
    pinyin: phones.split(" ")
    for pinyin, phones in (line.split("\t") for line in
                           (_DATA / "opencpop-strict.txt").read_text(encoding="utf-8").splitlines() if line)
}
# pypinyin gives standard finals; after an initial the table spells them abbreviated (gui, liu, lun).
_ABBREVIATED_FINALS = {"uei": "ui", "iou": "iu", "uen": "un"}
# Without an initial, the table spells the syllable with y/w (yi, wu, ya, yuan).
_ZERO_INITIAL_SYLLABLES = {"ing": "ying", "i": "yi", "in": "yin", "u": "wu"}
_ZERO_INITIAL_GLIDES = {"v": "yu", "i": "y", "u": "w"}
_UNKNOWN = "UNK"  # in the base symbol table for exactly this


def _spelled_pinyin(initial: str, final: str) -> str:
    """The opencpop-strict spelling of an initial and a toneless pypinyin final."""
    if initial:
        return initial + _ABBREVIATED_FINALS.get(final, final)
    if final in _ZERO_INITIAL_SYLLABLES:
        return _ZERO_INITIAL_SYLLABLES[final]
    if final[:1] in _ZERO_INITIAL_GLIDES:
        return _ZERO_INITIAL_GLIDES[final[0]] + final[1:]
    return final


def _syllable_phones(initial: str, final: str) -> tuple[list[str], int]:
    """Phones and tone of one syllable; UNK for a character pypinyin cannot read."""
    tone = _tone(final)
    phones = _PINYIN_TO_PHONES.get(_spelled_pinyin(initial, final[:-1]))
    if phones is None or tone not in {"1", "2", "3", "4", "5"}:
        return [_UNKNOWN], 0
    return phones, int(tone)


def _word_phones(word: str, pos: str) -> list[tuple[list[str], int]]:
    """Phones and tone of each character of a word; punctuation is its own phone, tone 0."""
    finals = _apply_sandhi(word, pos, _finals(word))
    return [([char], 0) if char in PUNCTUATION else _syllable_phones(initial, final)
            for char, initial, final in zip(word, _initials(word), finals, strict=True)]


_SENTENCE_END_RE = re.compile(f"(?<=[{re.escape(''.join(PUNCTUATION))}])")
_NORMALIZED_RE = re.compile(f"[{_ALLOWED_CLASS}]*")


def g2p(norm_text: str, tokenizer=None) -> tuple[list[str], list[int], list[int]]:
    """(phones, tones, word2ph) of normalised text, as upstream `chinese.g2p`.

    word2ph has one entry per character plus one per `_` pad; a Chinese BERT tokenizer gives one
    token per character here, so `tokenizer` is not needed.
    """
    if not _NORMALIZED_RE.fullmatch(norm_text):
        raise ValueError(f"not normalised Mandarin text (run normalize first): {norm_text!r}")
    phones, tones, word2ph = ["_"], [0], [1]
    # Upstream segments each clause separately; that changes jieba's cuts, so keep it.
    for sentence in filter(None, _SENTENCE_END_RE.split(norm_text)):
        segments = [(word, pos) for word, pos in _jieba().posseg.lcut(sentence)]  # jieba pairs -> tuples
        for word, pos in _merge_for_sandhi(segments):
            for char_phones, tone in _word_phones(word, pos):
                phones += char_phones
                tones += [tone] * len(char_phones)
                word2ph.append(len(char_phones))
    phones.append("_")
    tones.append(0)
    word2ph.append(1)
    return phones, tones, word2ph

"""Text to the generator's inputs, the way upstream Bert-VITS2 2.3's web UI and server build them.

One code path for `vitsflow inputs`, `vitsflow synth`, the app and its `/voice` route:
`TextFrontend.request(text, mode, ...)` returns one `UtteranceInputs` per call upstream makes to
`net_g.infer`, in order. What upstream does (webui.py `process_text`, infer.py at v2.3), and here:

- **one language** (`zh`, `ja`, `en` or a params language): `|` separates utterances; each is one
  `get_text` (normalise, G2P, ids, add_blank, BERT). Upstream's `generate_audio` passes
  `skip_start` to every utterance but the first and `skip_end` to every one but the last, and
  `infer` then drops the first 3 and the last 2 items (blank, `_`, blank / `_`, blank): the
  utterances join without their boundary pads.
- **mix**: `[speaker]<zh>中文<jp>日本語<en>English|...` (`re_matching.text_matching`, `process_mix`):
  a `|` inside a segment starts a new utterance, the next segment continues the last one; each
  `[speaker]` block is its own run of utterances. An utterance is several segments, each through
  its own frontend and BERT, then joined as `infer_multilang` joins them: every segment but the
  utterance's first loses its first 3 items, every one but its last its last 2, and the
  utterance's own skip flags trim its outer ends.
- **auto**: each `|` part split into stretches of one language (`tools/sentence.py`
  `split_by_language`, its punctuation split, its Latin/CJK split, langid restricted to the
  model's languages), then spoken as mix with the request's speaker. Upstream 2.3 passes `JA` to
  `get_text` here and crashes on every Japanese stretch; master 8f7fbd8 maps it to `JP`: followed.
- **style text** (single-language mode, as upstream: `process_mix`/`process_auto` pass none): each
  phone's BERT vector becomes `(1 - w) * own + w * mean(style)`, the mean over every token of the
  style text (its [CLS] and [SEP] included) in the same model and layer (`chinese_bert.py`,
  `japanese_bert.py`, `english_bert_mock.py` at v2.3). The style text is tokenised as given
  (Japanese: OpenJTalk's words joined, as upstream's `text2sep_kata`).
- **long text**: `split_text` is `tts_split` with `cut_by_sent=True`: paragraphs at newlines,
  sentences after `。！;？?`, `......`, `……` and a closing quote; the pause after each piece in
  samples as upstream counts them, at the model's rate (upstream counts at 44.1 kHz whatever the
  model's rate, so its pauses are off by the rate ratio on a 22.05 kHz model).

Beyond upstream (which crashes or silently drops these), bad input is refused with the part and
the reason: an unknown `<lang>` tag or speaker, an empty segment or utterance, text outside any
`[speaker]` block, a style weight outside 0..1, auto text in a script none of the model's
languages is written in.

BERT runs batched across every segment and style text of a request (the bert stage's batch
shapes; a short batch runs with its own rows, at least 2, instead of the shape's empty ones: a
segment's features then equal the bert stage's to float16 rounding on the CPU, bit for bit on
some; on a GPU, where kernels change with the row count, to float rounding), the model loaded once.
"""
from __future__ import annotations

import json
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tasks.core.config import (PAUSE_DEFAULTS, PAUSE_LIMITS, STYLE_WEIGHT_DEFAULT, BertStageConfig,
                               LanguageConfig)
from tasks.frontends.symbols import SymbolTable, intersperse

PAUSE_RATE = 44100  # upstream's tts_split counts silence in samples at 44.1 kHz
DEFAULT_STYLE_WEIGHT = STYLE_WEIGHT_DEFAULT  # upstream 2.3's get_text / web UI default
DEFAULT_SENT_PAUSE, DEFAULT_PARA_PAUSE = PAUSE_DEFAULTS["sent_pause"], PAUSE_DEFAULTS["para_pause"]
MAX_SENT_PAUSE, MAX_PARA_PAUSE = PAUSE_LIMITS["sent_pause"], PAUSE_LIMITS["para_pause"]
SKIP_START, SKIP_END = 3, 2  # items infer / infer_multilang drop at a joined boundary (v2.3)
MODES = ("mix", "auto")
# A request's short BERT batches run with their own rows (at least 2), not the stage's full shape:
# the stage's features to float16 rounding (bit for bit on some CPUs, not all: the row count can
# change the GEMM blocking; tasks.prep.bert.encode_features), and 4x less compute for one sentence
# of 24 tokens.
INFERENCE_MIN_ROWS = 2
MIX_TAGS = {"zh": "zh", "jp": "ja", "ja": "ja", "en": "en"}  # upstream's <zh> <jp> <en>; <ja> too


class SynthError(ValueError):
    """The request cannot be served (unknown speaker or language, nothing speakable, wrong model kind)."""


@dataclass
class Utterance:
    """One upstream `infer`/`infer_multilang` call: its segments and skip flags."""
    segments: list[tuple[str, str]]  # (text, language code)
    speaker: Optional[str] = None  # mix mode names one per [speaker] block
    skip_start: bool = False
    skip_end: bool = False


@dataclass
class UtteranceInputs:
    """What `SynthesizerTrn.infer` takes for one utterance (blanks included when the model adds them)."""
    utterance: Utterance
    phones: list[str]  # symbol strings
    ids: np.ndarray  # int64 [T]
    tones: np.ndarray  # int64 [T] global tone ids
    lang_ids: np.ndarray  # int64 [T]
    bert: Optional[dict[str, np.ndarray]]  # slot -> float32 [dim, T] (None: a model without BERT)
    rows: list[dict[str, Any]] = field(default_factory=list)  # per segment: the frontend's norm_text, phones, tones, word2ph

    def tensors(self, device: str = "cpu") -> dict[str, Any]:
        import torch

        out = {"x": torch.from_numpy(self.ids)[None], "tone": torch.from_numpy(self.tones)[None],
               "language": torch.from_numpy(self.lang_ids)[None], "x_lengths": torch.LongTensor([len(self.ids)])}
        if self.bert is not None:
            out.update(bert=torch.from_numpy(self.bert["zh"])[None], ja_bert=torch.from_numpy(self.bert["ja"])[None],
                       en_bert=torch.from_numpy(self.bert["en"])[None])
        return {k: v.to(device) for k, v in out.items()}


# ----------------------------------------------------------------------------- parsing (no model)

def parse_single(text: str, language: str) -> list[Utterance]:
    """One language: `|` separates utterances (upstream `text.split("|")` in process_text)."""
    if not text.strip():
        raise SynthError("nothing to say: the text is empty")
    parts = text.split("|")
    for n, part in enumerate(parts, 1):
        if not part.strip():
            raise SynthError(f"utterance {n} of {len(parts)} (between `|`) is empty")
    return _flag([Utterance([(part, language)]) for part in parts])


def _flag(utterances: list[Utterance]) -> list[Utterance]:
    """generate_audio / generate_audio_multilang: skip_start on all but the first, skip_end on all but the last."""
    for i, u in enumerate(utterances):
        u.skip_start, u.skip_end = i != 0, i != len(utterances) - 1
    return utterances


_SPEAKER_BLOCK = re.compile(r"(\[\S+?\])(.+?)(?=\[\S+?\]|$)", re.DOTALL)  # re_matching.text_matching
_LANG_SEGMENT = re.compile(r"<(\S+?)>([^<]+)", re.DOTALL)  # extract_language_and_text_updated
_TAG = re.compile(r"<(\S*?)>")


def parse_mix(text: str, languages: Optional[set[str]] = None,
              speakers: Optional[set[str]] = None) -> list[Utterance]:
    """`[speaker]<zh>…<jp>…|…` -> utterances, each [speaker] block flagged on its own (upstream
    calls generate_audio_multilang once per block)."""
    blocks = list(_SPEAKER_BLOCK.finditer(text))
    if not blocks:
        raise SynthError("mix text needs `[speaker]<lang>text`, e.g. `[spk]<zh>你好<en>hello`: no [speaker] tag found")
    lead = text[:blocks[0].start()]
    if lead.strip():
        raise SynthError(f"mix text: {lead.strip()[:40]!r} comes before the first [speaker] tag")
    out: list[Utterance] = []
    for b, block in enumerate(blocks, 1):
        speaker, dialogue = block.group(1)[1:-1], block.group(2)
        where = f"[{speaker}] (block {b})"
        if speakers is not None and speaker not in speakers:
            raise SynthError(f"mix text {where}: unknown speaker {speaker!r}; this model knows {sorted(speakers)}")
        first = _TAG.search(dialogue)
        if first is None:
            raise SynthError(f"mix text {where}: no <lang> segment (write `<zh>…`, `<jp>…` or `<en>…`)")
        if dialogue[:first.start()].strip():
            raise SynthError(f"mix text {where}: {dialogue[:first.start()].strip()[:40]!r} has no <lang> tag before it")
        for tag in _TAG.finditer(dialogue):
            code = MIX_TAGS.get(tag.group(1).lower())
            if code is None or (languages is not None and code not in languages):
                known = sorted(t for t, c in MIX_TAGS.items() if languages is None or c in languages)
                raise SynthError(f"mix text {where}: unknown language tag <{tag.group(1)}>; "
                                 f"this model takes {', '.join(f'<{t}>' for t in known)}")
            end = _TAG.search(dialogue, tag.end())
            content = dialogue[tag.end():end.start() if end else len(dialogue)]
            if not content.strip():
                raise SynthError(f"mix text {where}: the <{tag.group(1)}> segment is empty")
        utterances: list[list[tuple[str, str]]] = []
        for lang, content in _LANG_SEGMENT.findall(dialogue):  # process_mix
            code = MIX_TAGS[lang.lower()]
            parts = [p for p in content.strip().split("|") if p != ""]
            if not parts:
                continue
            if not utterances:
                utterances = [[(p, code)] for p in parts]
            else:
                utterances[-1].append((parts[0], code))
                utterances += [[(p, code)] for p in parts[1:]]
        if not utterances:
            raise SynthError(f"mix text {where}: nothing to say (its segments hold only `|`)")
        out += _flag([Utterance(segs, speaker) for segs in utterances])
    return out


# tools/sentence.py split_by_language: the punctuation its stretches are cut at
_AUTO_PUNCT = re.compile("[" + re.escape("!\"#$%&'()*+,-./:;<>=?@[]{}\\^_`") +
                         "！？。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」"
                         "『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.]+")
# tools/classify_language.py split_alpha_nonalpha: between Latin letters and CJK/kana
_ALPHA_SPLIT = re.compile(r"(?:(?<=[\u4e00-\u9fff])|(?<=[\u3040-\u30FF]))(?=[a-zA-Z])"
                          r"|(?<=[a-zA-Z])(?:(?=[\u4e00-\u9fff])|(?=[\u3040-\u30FF]))")
_identifiers: dict[tuple[str, ...], Any] = {}
_langid_lock = threading.Lock()


def _classify(text: str, targets: tuple[str, ...]) -> str:
    """langid restricted to `targets` (upstream's classify_language), on an identifier of our own:
    upstream's `langid.set_languages` changes the module's global one."""
    with _langid_lock:
        if targets not in _identifiers:
            from langid import langid

            ident = langid.LanguageIdentifier.from_modelstring(langid.model, norm_probs=False)
            ident.set_languages(list(targets))
            _identifiers[targets] = ident
        return _identifiers[targets].classify(text)[0]


def langid_languages() -> set[str]:
    from langid import langid

    with _langid_lock:
        if () not in _identifiers:
            _identifiers[()] = langid.LanguageIdentifier.from_modelstring(langid.model, norm_probs=False)
        return set(_identifiers[()].nb_classes)


def split_by_language(text: str, targets: list[str]) -> list[tuple[str, str]]:
    """[(stretch, language)] covering `text`, as upstream's split_by_language: cut at punctuation
    (and between Latin and CJK when English and Chinese/Japanese are both targets), each piece
    classified, neighbours of one language joined with what lay between them. Upstream's targets
    are always zh, ja, en; a model with more languages (langid knows them) gets them as targets too,
    and the Latin/CJK cut whenever en and zh or ja are among them."""
    pieces = _AUTO_PUNCT.split(text)
    if "en" in targets and {"zh", "ja"} & set(targets):
        pieces = [p for piece in pieces for p in _ALPHA_SPLIT.split(piece)]
    key = tuple(sorted(targets))
    pre, start, end, out = "", 0, 0, []
    for piece in pieces:
        if piece == "" or piece.isspace():
            continue
        lang = _classify(piece, key)
        end += text[end:].index(piece)
        if pre and pre != lang:
            out.append((text[start:end], pre))
            start = end
        end += len(piece)
        pre = lang
    out.append((text[start:], pre))
    return out


# Scripts a language is written in, to refuse auto text the model cannot speak (langid restricted
# to the model's languages always answers one of them, even for Korean).
_SCRIPTS = {"zh": {"han"}, "ja": {"han", "kana"}, "en": {"latin"}, "de": {"latin"}, "fr": {"latin"},
            "es": {"latin"}, "it": {"latin"}, "pt": {"latin"}, "nl": {"latin"}, "ko": {"hangul", "han"},
            "ru": {"cyrillic"}, "uk": {"cyrillic"}}


# Unicode name prefixes of letters -> script. Anything else (symbols, ideographic marks such as 々
# and 〆, scripts none of these tables name) is not checked.
_SCRIPT_NAMES = (("CJK", "han"), ("IDEOGRAPHIC", "han"), ("HIRAGANA", "kana"), ("KATAKANA", "kana"),
                 ("HALFWIDTH KATAKANA", "kana"), ("FULLWIDTH LATIN", "latin"), ("LATIN", "latin"),
                 ("HANGUL", "hangul"), ("HALFWIDTH HANGUL", "hangul"), ("CYRILLIC", "cyrillic"),
                 ("GREEK", "greek"), ("ARABIC", "arabic"), ("HEBREW", "hebrew"), ("THAI", "thai"),
                 ("DEVANAGARI", "devanagari"))


def _script(ch: str) -> Optional[str]:
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    return next((script for prefix, script in _SCRIPT_NAMES if name.startswith(prefix)), None)


def parse_auto(text: str, languages: list[str]) -> list[Utterance]:
    """process_auto: per `|` part, split_by_language over the model's languages langid knows."""
    targets = [c for c in languages if c in langid_languages()]
    if not targets:
        raise SynthError(f"auto mode: langid knows none of this model's languages {languages}")
    if all(c in _SCRIPTS for c in languages):
        written = set().union(*(_SCRIPTS[c] for c in languages))
        for ch in text:
            s = _script(ch)
            if s is not None and s not in written:
                word = re.match(r"\w+", text[text.index(ch):]).group(0)
                raise SynthError(f"auto mode: {word!r} is written in the "
                                 f"{unicodedata.name(ch, s).split()[0].title()} script, which none of this "
                                 f"model's languages ({', '.join(languages)}) uses")
    out = []
    for n, part in enumerate(text.split("|"), 1):
        if part == "":
            continue
        stretches = [(s, lang) for s, lang in split_by_language(part, targets) if s != ""]
        if not stretches or any(lang == "" for _, lang in stretches):
            raise SynthError(f"auto mode: part {n} ({part.strip()[:40]!r}) has nothing to speak")
        out.append(Utterance(stretches))
    if not out:
        raise SynthError("auto mode: the text is empty")
    return _flag(out)


def cut_sentences(paragraph: str) -> list[str]:
    """re_matching.cut_sent: a break after `。！;？?`, `......`, `……` unless a closing quote follows,
    and after such a mark and its closing quote."""
    p = re.sub(r"([。！;？?])([^”’])", r"\1\n\2", paragraph)
    p = re.sub(r"(\.{6})([^”’])", r"\1\n\2", p)
    p = re.sub(r"(…{2})([^”’])", r"\1\n\2", p)
    p = re.sub(r"([。！？?][”’])([^，。！？?])", r"\1\n\2", p)
    return p.rstrip().split("\n")


def split_text(text: str, sent_pause: float = DEFAULT_SENT_PAUSE, para_pause: float = DEFAULT_PARA_PAUSE,
               sample_rate: int = PAUSE_RATE) -> tuple[list[str], list[float]]:
    """tts_split with cut_by_sent: (pieces, seconds of silence after each), counted in whole
    samples at `sample_rate` as upstream counts them (`int(rate * seconds)`)."""
    for name, value, top in (("sentence pause", sent_pause, MAX_SENT_PAUSE),
                             ("paragraph pause", para_pause, MAX_PARA_PAUSE)):
        if not 0 <= value <= top:
            raise SynthError(f"{name} {value}: expected 0..{top:g} seconds")
    while "\n\n" in text:
        text = text.replace("\n\n", "\n")
    text = text.replace("|", "")
    pieces, pauses = [], []
    for para in (p.strip() for p in re.split("[\n]", text) if p.strip()):  # re_matching.cut_para
        sents = [s for s in cut_sentences(para) if s != ""]
        for s in sents:
            pieces.append(s)
            pauses.append(int(sample_rate * sent_pause) / sample_rate)
        if sents and para_pause - sent_pause > 0:
            pauses[-1] += int(sample_rate * (para_pause - sent_pause)) / sample_rate
    if not pieces:
        raise SynthError("nothing to say: the text has no sentences")
    return pieces, pauses


# ----------------------------------------------------------------------------- the frontend


@dataclass
class TextFrontend:
    """Everything text needs to become a model's inputs: symbol table, language configs (normaliser,
    G2P, BERT model/layer/slot), BERT widths and batch shapes, add_blank."""
    symbols: SymbolTable
    languages: dict[str, LanguageConfig]
    bert_dims: dict[str, Optional[int]]  # slot -> width (None: ask the slot's model)
    use_bert: bool
    add_blank: bool
    root: Path
    bert_stage: BertStageConfig = field(default_factory=BertStageConfig)
    device: str = "cpu"

    def language(self, language: str) -> LanguageConfig:
        if language not in self.symbols.language_ids:
            raise SynthError(f"unknown language {language!r}; this model knows {sorted(self.languages)}")
        if language not in self.languages:
            raise SynthError(f"language {language!r} is in the model's symbol table but no frontend config "
                             f"was found for it (params `languages`); known: {sorted(self.languages)}")
        return self.languages[language]

    def slot(self, language: str) -> str:
        return self.languages[language].bert.slot or language  # as tasks.prep.bert.slot_of

    def parse(self, text: str, mode: str, speakers: Optional[set[str]] = None) -> list[Utterance]:
        if mode == "mix":
            return parse_mix(text, set(self.languages), speakers)
        if mode == "auto":
            return parse_auto(text, [c for c in self.languages if c in self.symbols.language_ids])
        self.language(mode)
        return parse_single(text, mode)

    def request(self, text: str, mode: str, style_text: Optional[str] = None,
                style_weight: float = DEFAULT_STYLE_WEIGHT, speakers: Optional[set[str]] = None) -> list[UtteranceInputs]:
        """Text in a mode (a language code, `mix` or `auto`) -> one UtteranceInputs per upstream infer call."""
        return self.requests([text], mode, style_text, style_weight, speakers)[0]

    def requests(self, texts: list[str], mode: str, style_text: Optional[str] = None,
                 style_weight: float = DEFAULT_STYLE_WEIGHT, speakers: Optional[set[str]] = None,
                 labels: Optional[list[str]] = None) -> list[list[UtteranceInputs]]:
        """`request` for several texts (a long text's pieces), their BERT batched together. Errors
        name the text by `labels` (default: none when one text, `piece N` otherwise)."""
        if not 0.0 <= style_weight <= 1.0:
            raise SynthError(f"style weight {style_weight}: expected 0..1 (0: the text's own BERT, 1: the style text's)")
        style_text = style_text or None  # upstream: "" means none
        if style_text is not None and mode in MODES:
            raise SynthError(f"style text applies to one language (as upstream's web UI); not to {mode} mode")
        if style_text is not None and not self.use_bert:
            raise SynthError("style text blends BERT features, and this model has no BERT inputs")
        labels = labels or ([""] if len(texts) == 1 else [f"piece {i}: " for i in range(1, len(texts) + 1)])
        parsed, rows = [], []
        for label, text in zip(labels, texts):
            try:
                utts = self.parse(text, mode, speakers)
                if not utts:
                    raise SynthError("nothing to say")
                rows.append([[self.g2p(t, code, _where(u, s, len(utt.segments)))
                              for s, (t, code) in enumerate(utt.segments, 1)] for u, utt in enumerate(utts, 1)])
            except SynthError as err:
                raise SynthError(f"{label}{err}") from None
            parsed.append(utts)
        feats: dict[Any, np.ndarray] = {}
        style = None
        if self.use_bert:
            flat = [((t, u, s), row) for t, utts in enumerate(rows) for u, segs in enumerate(utts)
                    for s, row in enumerate(segs)]
            names = {key: f"{labels[key[0]]}{_where(key[1] + 1, key[2] + 1, len(rows[key[0]][key[1]]))}: "
                     for key, _ in flat}
            if style_text is not None:
                flat.append(("style", self._style_row(style_text, mode)))
                names["style"] = "style text: "
            feats = self._bert(flat, names)
            if style_text is not None:
                style = feats.pop("style").mean(axis=1, keepdims=True)  # [dim, 1]: every token's, [CLS]/[SEP] too
        out = []
        for t, (utts, text_rows) in enumerate(zip(parsed, rows)):
            try:
                out.append([self._assemble(utt, segs, [feats.get((t, u, s)) for s in range(len(segs))], style,
                                           style_weight, u + 1)
                            for u, (utt, segs) in enumerate(zip(utts, text_rows))])
            except SynthError as err:
                raise SynthError(f"{labels[t]}{err}") from None
        return out

    def g2p(self, text: str, language: str, where: str = "text") -> dict[str, Any]:
        from tasks.core.hf import tokenizer_for
        from tasks.prep.text import text_one

        lang = self.language(language)
        entry = text_one(text, language, lang, tokenizer_for(self.root, lang.bert))
        if "reject" in entry.meta:
            reason = entry.meta["reject"]
            if reason == "normalised text is empty":
                raise SynthError(f"{where}: nothing to say: {_short(text)!r} is empty after {language!r} normalisation")
            raise SynthError(f"{where}: cannot synthesise {_short(text)!r} ({language}): {reason}")
        return {"language": language, **entry.meta}

    def _style_row(self, style_text: str, language: str) -> dict[str, Any]:
        """The style text as a bert-stage row: its own tokens, one column each."""
        from tasks.core.hf import tokenizer_for

        text = style_text
        if self.languages[language].normalizer == "ja":  # japanese_bert: "".join(text2sep_kata(style_text)[0])
            from tasks.frontends.ja import bert_text

            text = bert_text(style_text)
        n = len(tokenizer_for(self.root, self.languages[language].bert)(text)["input_ids"])
        return {"language": language, "norm_text": text, "word2ph": [1] * n}

    def _bert(self, rows: list[tuple[Any, dict[str, Any]]], names: Optional[dict[Any, str]] = None) -> dict[Any, np.ndarray]:
        """float32 [dim, n_phones] per row, batched by language and shape as the bert stage batches."""
        from tasks.prep.bert import BertItem, batches, encode_features

        items = [BertItem({"id": str(i), **row}, f"{i:08d}", len(row["word2ph"])) for i, (_, row) in enumerate(rows)]
        out = {}
        for batch in batches(items, self.bert_stage):
            code = batch[0].row["language"]
            for item, f in zip(batch, encode_features(batch, self.languages[code].bert, self.bert_stage,
                                                      self.root, self.device, min_rows=INFERENCE_MIN_ROWS)):
                key = rows[int(item.row["id"])][0]
                if isinstance(f, str):
                    raise SynthError(f"{(names or {}).get(key, '')}BERT features for "
                                     f"{_short(item.row['norm_text'])!r}: {f}")
                want = self.bert_dims.get(self.slot(code))
                if want is not None and f.shape[0] != want:
                    raise SynthError(f"language {code!r}: its BERT model ({self.languages[code].bert.model}) gives "
                                     f"{f.shape[0]}-wide features, the model was trained on {want}-wide ones: "
                                     "configure the BERT model it was trained with (params `languages`)")
                out[key] = f.numpy()
        return out

    def slot_dim(self, slot: str) -> int:
        if self.bert_dims.get(slot) is None:
            from tasks.core.hf import encoder_for

            code = next((c for c in self.languages if self.slot(c) == slot), next(iter(self.languages)))
            model, _ = encoder_for(self.root, self.languages[code].bert, self.device)
            self.bert_dims[slot] = int(model.config.hidden_size)
        return int(self.bert_dims[slot])

    def _assemble(self, utt: Utterance, rows: list[dict[str, Any]], feats: list[Optional[np.ndarray]],
                  style: Optional[np.ndarray], style_weight: float, u: int = 1) -> UtteranceInputs:
        from tasks.prep.bert import SLOTS

        parts = []
        n = len(rows)
        for s, (row, f) in enumerate(zip(rows, feats)):
            code = row["language"]
            try:
                ids, tones, langs = self.symbols.to_ids(row["phones"], row["tones"], code)
            except KeyError as err:
                raise SynthError(f"{_where(u, s + 1, n)}: {str(err).strip(chr(39) + chr(34))}") from None
            phones = list(row["phones"])
            if f is not None:
                if style is not None:  # upstream blends in float32 before anything is rounded
                    f = f * (1 - style_weight) + style * style_weight
                f = f.astype(np.float16).astype(np.float32)  # the bert stage's fp16, as in training
            if self.add_blank:
                ids, tones, langs = (intersperse(v, 0) for v in (ids, tones, langs))
                phones = intersperse(phones, self.symbols.symbols[0])
                if f is not None:  # word2ph doubled, +1 on the first: [dim, 2n + 1] (corpus.blank_features)
                    f = np.concatenate([f[:, :1], np.repeat(f, 2, axis=1)], axis=1)
            start = SKIP_START if (s != 0 or utt.skip_start) else 0
            stop = -SKIP_END if (s != n - 1 or utt.skip_end) else None
            cut = slice(start, stop)
            slots = None
            if f is not None:
                slots = {slot: (f if slot == self.slot(code) else np.zeros((self.slot_dim(slot), f.shape[1]), np.float32))
                         for slot in SLOTS}
                slots = {k: v[:, cut] for k, v in slots.items()}
            parts.append((phones[cut], np.asarray(ids[cut], np.int64), np.asarray(tones[cut], np.int64),
                          np.asarray(langs[cut], np.int64), slots))
        if sum(len(p[0]) for p in parts) == 0:
            raise SynthError(f"utterance {u} ({_short(utt.segments[0][0])!r}): nothing left after joining its segments")
        bert = None
        if parts[0][4] is not None:
            bert = {slot: np.concatenate([p[4][slot] for p in parts], axis=1) for slot in SLOTS}
        return UtteranceInputs(utt, [ph for p in parts for ph in p[0]], np.concatenate([p[1] for p in parts]),
                               np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]), bert,
                               rows)


def _where(u: int, s: int, n_segments: int) -> str:
    return f"utterance {u} segment {s}" if n_segments > 1 else f"utterance {u}"


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def frontend_from_params(params_path: Path, device: str = "cpu") -> TextFrontend:
    """A frontend from params alone (no model): the base symbol table plus params languages, BERT
    widths from the models, add_blank and the variant's BERT use from `model`."""
    from model.models import VARIANTS
    from tasks.core.config import find_repo_root, load_params
    from tasks.prep.bert import SLOTS
    from tasks.prep.text import symbol_table

    params = load_params(params_path)
    symbols = symbol_table(params, {})
    return TextFrontend(symbols, dict(params.languages), {slot: None for slot in SLOTS},
                        VARIANTS[params.model.variant]["use_bert"], params.model.add_blank,
                        find_repo_root(Path(params_path)), params.features.bert, device)


def inputs_arrays(utts: list[UtteranceInputs], mode: str) -> dict[str, np.ndarray]:
    """The utterances concatenated as `vitsflow inputs` writes them (.npz)."""
    out = {"phones": np.array([p for u in utts for p in u.phones], dtype=str),
           "tones": np.concatenate([u.tones for u in utts]), "lang_ids": np.concatenate([u.lang_ids for u in utts]),
           "ids": np.concatenate([u.ids for u in utts]),
           "utt_lengths": np.array([len(u.ids) for u in utts], dtype=np.int64)}
    if utts[0].bert is not None:
        for slot, name in (("zh", "bert"), ("ja", "ja_bert"), ("en", "en_bert")):
            out[name] = np.concatenate([u.bert[slot] for u in utts], axis=1)
    if mode in MODES:
        out["segments"] = np.array(json.dumps([[list(s) for s in u.utterance.segments] for u in utts],
                                              ensure_ascii=False))
    if mode == "mix":
        out["speakers"] = np.array(json.dumps([u.utterance.speaker for u in utts], ensure_ascii=False))
    return out


__all__ = ["SynthError", "TextFrontend", "Utterance", "UtteranceInputs", "frontend_from_params", "inputs_arrays",
           "parse_auto", "parse_mix", "parse_single", "split_by_language", "split_text"]

"""Stage `text`: normalisation and G2P of every ingested utterance, in upstream 2.x conventions.

Outs (one folder): `text-NNNNN.jsonl` shards (id, language, speaker, split, norm_text, phones,
language-local tones, word2ph), `symbols.json` (the symbol table the model reads: the 112 base
symbols, then any a new language brings), `rejects.jsonl` and `summary.json`.
"""
from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from transformers import AutoTokenizer  # at import: transformers' lazy imports race in worker threads

from tasks.config import LanguageConfig, Params, resolve_model_path
from tasks.datasets import Reject
from tasks.frontends import backend_info, g2p, normalize
from tasks.frontends.symbols import BASE_LANGUAGE_IDS, BASE_SYMBOLS, SymbolTable
from tasks.ingest import reason_kind
from tasks.shards import ShardWriter, read_jsonl, write_jsonl
from tasks.storage import atomic_write_bytes

_local = threading.local()


def tokenizer_for(root: Path, lang: LanguageConfig):
    """The language's BERT tokenizer, loaded once per thread (fast tokenizers are not thread-safe)."""
    cache = _local.__dict__.setdefault("tokenizers", {})
    key = (lang.bert.model, lang.bert.revision)
    if key not in cache:
        cache[key] = AutoTokenizer.from_pretrained(resolve_model_path(root, lang.bert.model),
                                                   revision=lang.bert.revision)
    return cache[key]


@dataclass
class TextResult:
    row: dict[str, Any] | None = None
    reject: Reject | None = None


def check_alignment(language: str, phones: list[str], tones: list[int], word2ph: list[int],
                    n_tokens: int, num_tones: int) -> str | None:
    """Why a G2P result is unusable, or None. The model relies on every one of these."""
    if len(phones) != len(tones):
        return f"{len(phones)} phones but {len(tones)} tones"
    if len(phones) < 3:
        return "no phones: nothing speakable in the text"
    if phones[0] != "_" or phones[-1] != "_":
        return "phones must start and end with `_`"
    if sum(word2ph) != len(phones):
        return f"word2ph sums to {sum(word2ph)}, expected len(phones) = {len(phones)}"
    if len(word2ph) != n_tokens + 2:
        return f"word2ph has {len(word2ph)} entries, expected BERT tokens + 2 = {n_tokens + 2}"
    if any(t < 0 or t >= num_tones for t in tones):
        return f"tones outside 0..{num_tones - 1}"
    if language in BASE_LANGUAGE_IDS:
        unknown = sorted(set(phones) - set(BASE_SYMBOLS))
        if unknown:
            return f"phones not in the base symbol table: {unknown}"
    return None


def text_one(row: dict[str, Any], lang: LanguageConfig, tokenizer) -> TextResult:
    source, utt_id = row["source"], row["id"]
    try:
        norm = normalize(lang.normalizer, row["text"])
        if not norm.strip():
            return TextResult(reject=Reject(source, "normalised text is empty", utt_id, "text"))
        res = g2p(lang.g2p, norm, tokenizer, **lang.g2p_options)
    except Exception as err:  # one sentence that breaks a frontend must not stop the stage
        return TextResult(reject=Reject(source, f"g2p failed: {type(err).__name__}: {err}", utt_id, "text"))
    num_tones, _ = backend_info(lang.g2p)
    problem = check_alignment(row["language"], res.phones, res.tones, res.word2ph,
                              len(tokenizer.tokenize(norm)), num_tones)
    if problem:
        return TextResult(reject=Reject(source, f"word2ph/phone check failed: {problem}", utt_id, "text"))
    return TextResult(row={"id": utt_id, "language": row["language"], "speaker": row["speaker"],
                           "split": row["split"], "norm_text": norm, "phones": res.phones,
                           "tones": res.tones, "word2ph": res.word2ph})


def text_chunk(rows: list[dict[str, Any]], params: Params, root: Path) -> list[TextResult]:
    out = []
    for row in rows:
        lang = params.languages[row["language"]]
        out.append(text_one(row, lang, tokenizer_for(root, lang)))
    return out


def read_index(ingest_dir: Path) -> list[dict[str, Any]]:
    path = Path(ingest_dir) / "index.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ingest index not found; run the ingest stage first")
    return list(read_jsonl(path))


def symbol_table(params: Params, phones_by_language: dict[str, set[str]]) -> SymbolTable:
    """Base table, then each new language (registry order) with its sorted new phones appended."""
    table = SymbolTable()
    for code, lang in params.languages.items():
        if code in BASE_LANGUAGE_IDS:
            continue
        num_tones, _ = backend_info(lang.g2p)
        table = table.extend(code, num_tones, sorted(phones_by_language.get(code, ())))
    return table


@dataclass
class TextWriter:
    out_dir: Path
    shard_mb: int
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    phones_by_language: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tmp_dir = self.out_dir.with_name(self.out_dir.name + ".partial")
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.shards = ShardWriter(self.tmp_dir, "text", ".jsonl", self.shard_mb * 2**20)

    def add(self, results: Iterable[TextResult]) -> None:
        for r in results:
            if r.reject is not None:
                self.rejects.append(r.reject)
                continue
            self.counts[r.row["language"]] += 1
            self.phones_by_language.setdefault(r.row["language"], set()).update(r.row["phones"])
            self.shards.append((json.dumps(r.row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))

    def finish(self, params: Params) -> dict[str, Any]:
        shards = self.shards.close()
        table = symbol_table(params, self.phones_by_language)
        frontends = {code: backend_info(lang.g2p)[1] for code, lang in params.languages.items()}
        atomic_write_bytes(self.tmp_dir / "symbols.json",
                           json.dumps({**table.to_json(), "frontends": frontends}, indent=1,
                                      ensure_ascii=False).encode("utf-8"))
        write_jsonl(self.tmp_dir / "rejects.jsonl", (r.to_json() for r in self.rejects))
        summary = {"utterances": sum(self.counts.values()), "by_language": dict(sorted(self.counts.items())),
                   "rejects": len(self.rejects),
                   "rejects_by_reason": dict(sorted(Counter(reason_kind(r.reason) for r in self.rejects).items())),
                   "symbols": len(table.symbols), "new_symbols": len(table.symbols) - len(BASE_SYMBOLS),
                   "shards": len(shards)}
        atomic_write_bytes(self.tmp_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
        shutil.rmtree(self.out_dir, ignore_errors=True)
        self.tmp_dir.rename(self.out_dir)
        return summary


def g2p_json(params: Params, root: Path, language: str, text: str) -> dict[str, Any]:
    """What `vitsflow g2p` prints: upstream's g2p return values with language-local tones."""
    if language not in params.languages:
        raise KeyError(f"language {language!r} is not in params.yaml `languages` ({sorted(params.languages)})")
    lang = params.languages[language]
    norm = normalize(lang.normalizer, text)
    res = g2p(lang.g2p, norm, tokenizer_for(root, lang), **lang.g2p_options)
    return {"norm_text": norm, "phones": res.phones, "tones": res.tones, "word2ph": res.word2ph}

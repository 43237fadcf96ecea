"""Stage `ingest`: every dataset's audio conditioned into int16 PCM shards, an index and a split.

Outs (one folder): `audio-NNNNN.pcm` shards, `index.jsonl` (one row per utterance: id, dataset,
speaker, language, text, duration, sha256, shard location, split), `rejects.jsonl` (source, reason)
and `summary.json`. The folder is built under a temporary name and renamed when complete.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tasks.audio import AudioError, AudioSettings, condition
from tasks.config import Params
from tasks.datasets import Reject, SourceUtterance, read_dataset
from tasks.shards import ShardWriter, write_jsonl
from tasks.storage import Storage, atomic_write_bytes


@dataclass
class IngestPlan:
    storages: dict[str, Storage]
    utterances: list[SourceUtterance]
    rejects: list[Reject]


def plan_ingest(params: Params, root: Path) -> IngestPlan:
    """Read every dataset list; raises before any audio work if a path or list is unusable."""
    storages, utterances, rejects = {}, [], []
    for ds in params.datasets:
        storage, utts, bad = read_dataset(ds, root)
        storages[ds.name] = storage
        utterances += utts
        rejects += bad
    return IngestPlan(storages, utterances, rejects)


def audio_settings(params: Params) -> AudioSettings:
    a = params.audio
    return AudioSettings(a.sample_rate, a.loudness_lufs, a.trim_db, a.min_seconds, a.max_seconds)


@dataclass
class Ingested:
    utt: SourceUtterance
    pcm: np.ndarray | None = None
    reject: Reject | None = None


def ingest_one(storage: Storage, utt: SourceUtterance, settings: AudioSettings) -> Ingested:
    try:
        data = storage.read_bytes(utt.audio)
    except FileNotFoundError:
        return Ingested(utt, reject=Reject(utt.source, "missing audio file", utt.utt_id))
    except OSError as err:
        return Ingested(utt, reject=Reject(utt.source, f"cannot read audio file: {err}", utt.utt_id))
    try:
        return Ingested(utt, pcm=condition(data, utt.audio, settings))
    except AudioError as err:
        return Ingested(utt, reject=Reject(utt.source, str(err), utt.utt_id))


def ingest_chunk(storages: dict[str, Storage], chunk: list[SourceUtterance],
                 settings: AudioSettings) -> list[Ingested]:
    return [ingest_one(storages[u.dataset], u, settings) for u in chunk]


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


@dataclass
class IngestWriter:
    """Collects chunk results in order: dedups by content, shards the audio, keeps index rows."""

    out_dir: Path
    shard_mb: int
    sample_rate: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    _by_hash: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tmp_dir = self.out_dir.with_name(self.out_dir.name + ".partial")
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.shards = ShardWriter(self.tmp_dir, "audio", ".pcm", self.shard_mb * 2**20)

    def add(self, results: Iterable[Ingested]) -> None:
        for r in results:
            if r.reject is not None:
                self.rejects.append(r.reject)
                continue
            payload = r.pcm.tobytes()
            sha = hashlib.sha256(payload).hexdigest()
            if sha in self._by_hash:
                self.rejects.append(Reject(r.utt.source, f"exact duplicate of {self._by_hash[sha]}", r.utt.utt_id))
                continue
            self._by_hash[sha] = r.utt.utt_id
            loc = self.shards.append(payload)
            self.rows.append({"id": r.utt.utt_id, "dataset": r.utt.dataset, "speaker": r.utt.speaker,
                              "language": r.utt.language, "text": r.utt.text, "source": r.utt.source,
                              "num_samples": len(r.pcm), "duration": round(len(r.pcm) / self.sample_rate, 4),
                              "sample_rate": self.sample_rate, "sha256": sha, **loc})

    def finish(self, params: Params) -> dict[str, Any]:
        self.shards.close()
        s = params.split
        assign_split(self.rows, s.seed, s.val_per_speaker, s.min_train_per_speaker)
        write_jsonl(self.tmp_dir / "index.jsonl", self.rows)
        write_jsonl(self.tmp_dir / "rejects.jsonl", (r.to_json() for r in self.rejects))
        # Outs carry no timings or absolute paths: two clean clones must produce identical bytes.
        summary = summarize(self.rows, self.rejects)
        atomic_write_bytes(self.tmp_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
        shutil.rmtree(self.out_dir, ignore_errors=True)
        self.tmp_dir.rename(self.out_dir)
        return summary


def reason_kind(reason: str) -> str:
    """A reject reason without its specifics, for counting ('too short: 0.2 s ...' -> 'too short')."""
    return reason.split(":")[0].split(" (")[0].split(" of ")[0]


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

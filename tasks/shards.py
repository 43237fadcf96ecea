"""Sharded artifacts: many records appended to a few files, addressed by (shard, offset, nbytes).

DVC tracks files, so a stage's outs grow with shards, not utterances. A shard is written under a
temporary name and renamed when full, so a killed stage never leaves a half shard under a real name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np


class ShardWriter:
    """Append byte records to `<prefix>-00000<ext>`, `<prefix>-00001<ext>`, ... of at most `max_bytes`."""

    def __init__(self, out_dir: Path, prefix: str, ext: str, max_bytes: int):
        self.out_dir, self.prefix, self.ext, self.max_bytes = Path(out_dir), prefix, ext, max_bytes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []
        self._file = None
        self._size = 0

    def _open_next(self) -> None:
        self._close_current()
        name = f"{self.prefix}-{len(self.names):05d}{self.ext}"
        self.names.append(name)
        self._file = open(self.out_dir / f".{name}.tmp", "wb")
        self._size = 0

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            name = self.names[-1]
            os.replace(self.out_dir / f".{name}.tmp", self.out_dir / name)
            self._file = None

    def append(self, payload: bytes) -> dict[str, Any]:
        if self._file is None or (self._size and self._size + len(payload) > self.max_bytes):
            self._open_next()
        offset = self._size
        self._file.write(payload)
        self._size += len(payload)
        return {"shard": self.names[-1], "offset": offset, "nbytes": len(payload)}

    def close(self) -> list[str]:
        self._close_current()
        return list(self.names)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif self._file is not None:
            self._file.close()


def read_record(shard_dir: Path, loc: dict[str, Any]) -> bytes:
    with open(Path(shard_dir) / loc["shard"], "rb") as f:
        f.seek(loc["offset"])
        data = f.read(loc["nbytes"])
    if len(data) != loc["nbytes"]:
        raise ValueError(f"{Path(shard_dir) / loc['shard']}: truncated record at offset {loc['offset']}")
    return data


def read_pcm(shard_dir: Path, loc: dict[str, Any]) -> np.ndarray:
    """The int16 samples of one ingested utterance, without reading the rest of its shard."""
    return np.frombuffer(read_record(shard_dir, loc), dtype="<i2")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON lines atomically; returns the row count."""
    from tasks.storage import atomic_write_bytes

    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows]
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n" if lines else "").encode("utf-8"))
    return len(lines)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not valid JSON: {err}") from None

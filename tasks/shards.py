"""Sharded artifacts: many records appended to a few files, addressed by (shard, offset, nbytes).

DVC tracks files, so a stage's outs grow with shards, not utterances. A shard is written under a
temporary name and renamed when full, so a killed stage never leaves a half shard under a real name.

Shard boundaries are content-defined (as in rsync or restic): a shard ends after a record whose id
hashes below a threshold proportional to the record's size, once the shard holds half its target.
A boundary so depends only on the records around it, and adding utterances to one dataset changes
the shards they land in, not every shard after them. A shard whose bytes come out the same as in
the previous outs (`shards.json`: size and sha256 of each) is hard-linked from there instead of
written: its file keeps its inode and mtime, so DVC (with `persist: true` outs) neither re-hashes
nor re-caches it. The layout is a function of the records alone, never of what was there before.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

MANIFEST = "shards.json"


def _cuts_after(cut_key: str, nbytes: int, half: int) -> bool:
    """True for about one in `half / nbytes` records: a cut every `half` bytes on average."""
    h = int.from_bytes(hashlib.blake2b(cut_key.encode("utf-8"), digest_size=8).digest(), "big")
    return h < min(1.0, nbytes / half) * 2**64


class ShardWriter:
    """Append byte records to shards of about `target_bytes` each (between half and twice that),
    reusing unchanged shards of `reuse_from` (the previous outs).

    Shards are named `<prefix>-00000<ext>`, `<prefix>-00001<ext>`, ... in order, or with
    `content_names` after their first record (`<prefix>-<hash of its cut key><ext>`): DVC remembers
    hashes by path, so a shard keeps its name, and DVC's memory of it, when utterances are added
    before it. Use content names where readers find records through the index, never by file order."""

    def __init__(self, out_dir: Path, prefix: str, ext: str, target_bytes: int, reuse_from: Optional[Path] = None,
                 content_names: bool = False):
        self.out_dir, self.prefix, self.ext, self.content_names = Path(out_dir), prefix, ext, content_names
        self.half, self.max_bytes = max(1, target_bytes // 2), 2 * target_bytes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []
        self.manifest: dict[str, dict[str, Any]] = {}
        self.reused = 0
        self.reuse_from = Path(reuse_from) if reuse_from else None
        self._previous = _read_manifest(self.reuse_from) if self.reuse_from else {}
        self._file = None
        self._size = 0
        self._hash = None

    def _open_next(self, cut_key: str) -> None:
        self._close_current()
        if self.content_names:
            name = f"{self.prefix}-{hashlib.blake2b(cut_key.encode('utf-8'), digest_size=6).hexdigest()}{self.ext}"
        else:
            name = f"{self.prefix}-{len(self.names):05d}{self.ext}"
        self.names.append(name)
        self._file = open(self.out_dir / f".{name}.tmp", "wb")
        self._size = 0
        self._hash = hashlib.sha256()

    def _close_current(self) -> None:
        if self._file is None:
            return
        name = self.names[-1]
        tmp, final = self.out_dir / f".{name}.tmp", self.out_dir / name
        entry = {"bytes": self._size, "sha256": self._hash.hexdigest()}
        self.manifest[name] = entry
        if self._previous.get(name) == entry and self._link_previous(name):
            self._file.close()
            tmp.unlink()
            self.reused += 1
        else:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(tmp, final)
        self._file = None

    def _link_previous(self, name: str) -> bool:
        old = self.reuse_from / name
        try:
            if old.stat().st_size != self._size:
                return False
            os.link(old, self.out_dir / name)
            return True
        except OSError:  # gone, or a filesystem without hard links: write it instead
            return False

    def append(self, payload: bytes, cut_key: str) -> dict[str, Any]:
        """Add one record (`cut_key`: the utterance id, which decides where shards end and their names)."""
        if self._file is None or self._size + len(payload) > self.max_bytes:
            self._open_next(cut_key)
        offset = self._size
        self._file.write(payload)
        self._hash.update(payload)
        self._size += len(payload)
        if self._size >= self.half and _cuts_after(cut_key, len(payload), self.half):
            self._close_current()
        return {"shard": self.names[-1], "offset": offset, "nbytes": len(payload)}

    def close(self) -> list[str]:
        self._close_current()
        from tasks.storage import atomic_write_bytes

        atomic_write_bytes(self.out_dir / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True).encode())
        return list(self.names)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif self._file is not None:
            self._file.close()


def _read_manifest(out_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


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

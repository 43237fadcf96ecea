"""Sharded artifacts: many records appended to a few files, addressed by (shard, offset, nbytes).

DVC tracks files, so a stage's outs grow with shards, not utterances. A shard is written under a
temporary name and renamed when full, so a killed stage never leaves a half shard under a real name.

Shard boundaries are content-defined (as in rsync or restic): a shard ends after a record whose id
hashes below a threshold proportional to the record's size, once the shard holds an eighth of its
target (and at the latest at four times the target). A boundary so depends only on the records
around it, and adding utterances to one dataset changes the shard they land in, not the shards
after them. (The minimum is small on purpose: with half the target, the boundaries after an
insertion took several shards to fall back into step, and a 1% addition rewrote a quarter of the
spectrogram shards.) A shard that comes out the same as in the previous outs (`shards.json`: size,
sha256 and, for cached records, the recipe of cache keys it was built from) is hard-linked from
there instead of written: its file keeps its inode and mtime, so DVC (with `persist: true` outs)
neither re-hashes nor re-caches it. The layout is a function of the records alone, never of what
was there before.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import orjson

SHARD_TABLE = "shards.json"


def _cuts_after(cut_key: str, nbytes: int, gap: int) -> bool:
    """True for about one in `gap / nbytes` records: a candidate cut every `gap` bytes on average."""
    h = int.from_bytes(hashlib.blake2b(cut_key.encode("utf-8"), digest_size=8).digest(), "big")
    return h < min(1.0, nbytes / gap) * 2**64


class ShardWriter:
    """Append byte records to shards of about `target_bytes` each (between an eighth and four times that),
    reusing unchanged shards of `reuse_from` (the previous outs).

    Shards are named `<prefix>-00000<ext>`, `<prefix>-00001<ext>`, ... in order, or with
    `content_names` after their first record (`<prefix>-<hash of its cut key><ext>`): DVC remembers
    hashes by path, so a shard keeps its name, and DVC's memory of it, when utterances are added
    before it. Use content names where readers find records through the index, never by file order.

    A shard's records are held (as payloads, or as functions that fetch them) until it is complete.
    Records appended with `append_cached` name their content (a content-addressed cache key): a
    shard whose list of (key, size) matches the previous one's `recipe` is linked without fetching
    a single payload, so re-assembling a large corpus reads only the shards that changed."""

    def __init__(self, out_dir: Path, prefix: str, ext: str, target_bytes: int, reuse_from: Optional[Path] = None,
                 content_names: bool = False):
        self.out_dir, self.prefix, self.ext, self.content_names = Path(out_dir), prefix, ext, content_names
        self.min_bytes, self.max_bytes = max(1, target_bytes // 8), 4 * target_bytes
        self.gap = max(1, target_bytes - self.min_bytes)  # mean bytes from the minimum to a cut
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []
        self.table: dict[str, dict[str, Any]] = {}
        self.reused = 0
        self.reuse_from = Path(reuse_from) if reuse_from else None
        self._previous = _read_table(self.reuse_from) if self.reuse_from else {}
        self._records: list[tuple[int, Callable[[], bytes], Optional[str]]] = []  # the open shard's
        self._size = 0

    def append(self, payload: bytes, cut_key: str) -> dict[str, Any]:
        """Add one record (`cut_key`: the utterance id, which decides where shards end and their names)."""
        return self._add(len(payload), cut_key, lambda: payload, None)

    def append_cached(self, nbytes: int, cut_key: str, content_key: str, fetch: Callable[[], bytes]) -> dict[str, Any]:
        """Add a record by reference: `fetch()` returns its `nbytes` bytes, which `content_key` determines."""
        return self._add(nbytes, cut_key, fetch, content_key)

    def _add(self, nbytes: int, cut_key: str, fetch: Callable[[], bytes], content_key: Optional[str]) -> dict[str, Any]:
        if not self._records or self._size + nbytes > self.max_bytes:
            self._finish_shard()
            self.names.append(self._name(cut_key))
        offset = self._size
        self._records.append((nbytes, fetch, content_key))
        self._size += nbytes
        loc = {"shard": self.names[-1], "offset": offset, "nbytes": nbytes}
        if self._size >= self.min_bytes and _cuts_after(cut_key, nbytes, self.gap):
            self._finish_shard()
        return loc

    def _name(self, cut_key: str) -> str:
        if self.content_names:
            return f"{self.prefix}-{hashlib.blake2b(cut_key.encode('utf-8'), digest_size=6).hexdigest()}{self.ext}"
        return f"{self.prefix}-{len(self.names):05d}{self.ext}"

    def _finish_shard(self) -> None:
        if not self._records:
            return
        name = self.names[-1]
        previous = self._previous.get(name, {})
        recipe = None
        if all(key is not None for _, _, key in self._records):
            recipe = hashlib.sha256("".join(f"{key}:{n}\n" for n, _, key in self._records).encode()).hexdigest()
        if recipe and previous.get("recipe") == recipe and previous.get("bytes") == self._size and self._link_previous(name):
            self.table[name] = previous
            self.reused += 1
        else:
            self.table[name] = self._write(name, recipe, previous)
        self._records, self._size = [], 0

    def _write(self, name: str, recipe: Optional[str], previous: dict[str, Any]) -> dict[str, Any]:
        tmp, digest = self.out_dir / f".{name}.tmp", hashlib.sha256()
        with open(tmp, "wb") as f:
            for nbytes, fetch, _ in self._records:
                payload = fetch()
                if len(payload) != nbytes:
                    raise ValueError(f"{self.out_dir / name}: a record is {len(payload)} bytes, {nbytes} were announced")
                f.write(payload)
                digest.update(payload)
            entry = {"bytes": self._size, "sha256": digest.hexdigest(), **({"recipe": recipe} if recipe else {})}
            if previous.get("sha256") == entry["sha256"] and self._link_previous(name):
                tmp.unlink()  # the same bytes as before: keep the old file (and DVC's memory of it)
                self.reused += 1
                return entry
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.out_dir / name)
        return entry

    def _link_previous(self, name: str) -> bool:
        old = self.reuse_from / name
        try:
            if old.stat().st_size != self._size:
                return False
            os.link(old, self.out_dir / name)
            return True
        except OSError:  # gone, or a filesystem without hard links: write it instead
            return False

    def close(self) -> list[str]:
        self._finish_shard()
        from tasks.core.storage import atomic_write_bytes

        atomic_write_bytes(self.out_dir / SHARD_TABLE, json.dumps(self.table, indent=1, sort_keys=True).encode())
        return list(self.names)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()


def _read_table(out_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((out_dir / SHARD_TABLE).read_text())
    except (OSError, ValueError):
        return {}


class RecordReader:
    """Reads records by location, keeping each shard it touched open: a chunk's records mostly share
    a shard, and opening it per record cost the spec stage a tenth of its time."""

    def __init__(self, shard_dir: Path):
        self.shard_dir = Path(shard_dir)
        self._fds: dict[str, int] = {}

    def read(self, loc: dict[str, Any]) -> bytearray:
        """One record's bytes, in a writable buffer: numpy views of it go to torch without a copy."""
        fd = self._fds.get(loc["shard"])
        if fd is None:
            fd = self._fds[loc["shard"]] = os.open(self.shard_dir / loc["shard"], os.O_RDONLY)
        data = bytearray(loc["nbytes"])
        if os.preadv(fd, [data], loc["offset"]) != loc["nbytes"]:
            raise ValueError(f"{self.shard_dir / loc['shard']}: truncated record at offset {loc['offset']}")
        return data

    def pcm(self, loc: dict[str, Any]) -> np.ndarray:
        """The int16 samples of one ingested utterance, without reading the rest of its shard."""
        return np.frombuffer(self.read(loc), dtype="<i2")

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "RecordReader":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def read_record(shard_dir: Path, loc: dict[str, Any]) -> bytearray:
    with RecordReader(shard_dir) as reader:
        return reader.read(loc)


def read_pcm(shard_dir: Path, loc: dict[str, Any]) -> np.ndarray:
    with RecordReader(shard_dir) as reader:
        return reader.pcm(loc)


def jsonl_row(row: dict[str, Any]) -> bytes:
    """One JSON-lines row: compact, keys sorted, UTF-8 (orjson: a tenth of json.dumps's time, and a
    stage writes a row per utterance of the corpus on every run). NaN and Infinity, which orjson
    would write as null, are refused, as json.dumps(allow_nan=False) does."""
    line = orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
    if b"null" in line:  # a None, or a NaN written as one: json tells them apart
        json.dumps(row, allow_nan=False)
    return line


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON lines atomically; returns the row count."""
    from tasks.core.storage import atomic_write_bytes

    lines = [jsonl_row(r) for r in rows]
    atomic_write_bytes(Path(path), b"\n".join(lines) + b"\n" if lines else b"")
    return len(lines)


def loads_json(data: bytes | str) -> Any:
    """`json.loads` at 4x its speed (orjson), for the rows this pipeline writes: indexes and cache
    metadata, read in full by every stage run. Falls back to json for what orjson refuses (NaN,
    Infinity). Unlike json, orjson reads an integer beyond 64 bits as a float; no row holds one."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSON-lines file (indexes of every utterance, read by each stage and by stats)."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield loads_json(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{path}:{n}: not valid JSON: {err}") from None

"""A content-addressed cache of per-utterance results, one SQLite file per stage.

A result is stored under the sha256 of everything it depends on (input hashes, params, library and
frontend versions), so a stage recomputes exactly the utterances whose inputs changed, and a stage
killed half way finds its finished work here when run again. Each batch of results is one
transaction: a SIGKILL loses at most the batch in flight, never corrupts what was committed.
The cache lives outside DVC's outs (it is a speed-up, not an artifact): deleting it costs time only.

Payloads of 64 KiB and more (PCM, spectrograms) live in files beside the database, in
`<name>.blobs/`: SQLite writes a large blob twice (WAL, then checkpoint) and a file is written once
(108 MB of spectrograms in 16-utterance commits: 0.35 s into SQLite, 0.04 s as files). One pack
file a batch, each row naming its pack and offset: creating a file is the costly part of a
write on some disks (this VM: 350-590 us an open() under /tmp, 25-100 us under /work, the same
ext4; a spectrogram's bytes take 100 us), and upstream's one torch.save per utterance pays it once
an utterance. A pack is complete (temp file, then rename) before the rows naming it commit, so a
row always has its bytes; a pack without rows (a SIGKILL between the two) is dead space until the
cache is deleted, as are the bytes of a key put again (the cache is a speed-up: deleting it costs
time only). Caches from before packs (one file a payload) read as they were.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from tasks.core.shards import loads_json
from tasks.core.storage import file_sha256

# file_size: NULL when the payload is `data`, else its size in a file (and `data` is empty): at
# pack_offset of pack `pack` (a file name in the blob folder), or (pack NULL, caches from before
# packs) all of the file named by the key's hash
SCHEMA = ("CREATE TABLE IF NOT EXISTS results "
          "(key TEXT PRIMARY KEY, meta TEXT NOT NULL, data BLOB NOT NULL, file_size INTEGER, "
          "pack TEXT, pack_offset INTEGER)")
COLUMNS = {"file_size": "INTEGER", "pack": "TEXT", "pack_offset": "INTEGER"}  # added to older caches
FILE_BYTES = 64 * 1024


class CacheError(RuntimeError):
    pass


def _canonical(value: Any) -> str:
    # What dumps writes for a str or a list of ints (word2ph), without building an encoder per call.
    if isinstance(value, str):
        return json.encoder.encode_basestring(value)
    if type(value) is list and all(type(v) is int for v in value):
        return "[" + ",".join(map(str, value)) + "]"
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def cache_key(**parts: Any) -> str:
    """The sha256 of `parts` as canonical JSON: the same dependencies give the same key anywhere."""
    return hashlib.sha256(_canonical(parts).encode("utf-8")).hexdigest()


def cache_key_with(**fixed: Any) -> Callable[..., str]:
    """`cache_key` with some parts fixed, serialised once: `cache_key_with(**a)(**b) == cache_key(**a, **b)`.
    A stage's plan keys every utterance of the corpus on every run, and most parts (versions, params)
    are the same for all of them."""
    done = {k: _canonical(v) for k, v in fixed.items()}

    def key(**parts: Any) -> str:
        blobs = done | {k: _canonical(v) for k, v in parts.items()}
        blob = "{" + ",".join(f"{_canonical(k)}:{blobs[k]}" for k in sorted(blobs)) + "}"
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()
    return key


@dataclass(frozen=True)
class Entry:
    meta: dict[str, Any]  # small JSON: shapes, a reject reason, ...
    data: bytes  # the payload (PCM, fp16 features, ...)


class ResultCache:
    """Thread-safe: one connection per thread; WAL lets readers run while a writer commits."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.blob_dir = self.path.with_suffix(".blobs")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(results)")}
            for column, kind in COLUMNS.items():
                if column in have:
                    continue
                try:  # a cache from before payload files or packs
                    conn.execute(f"ALTER TABLE results ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as e:
                    if "duplicate column" not in str(e):  # another process upgraded it first
                        raise

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            for attempt in range(100):  # switching a new file to WAL fails at once (no busy wait) while
                try:                    # another process is creating it: worker processes open together
                    conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or attempt == 99:
                        raise
                    time.sleep(0.05)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def missing(self, keys: Iterable[str]) -> set[str]:
        """The keys not in the cache (one query per 500 keys)."""
        keys = list(dict.fromkeys(keys))
        have: set[str] = set()
        conn = self._conn()
        for i in range(0, len(keys), 500):
            batch = keys[i:i + 500]
            rows = conn.execute(f"SELECT key FROM results WHERE key IN ({','.join('?' * len(batch))})", batch)
            have.update(r[0] for r in rows)
        return set(keys) - have

    def get(self, key: str) -> Optional[Entry]:
        row = self._conn().execute("SELECT meta, data, file_size, pack, pack_offset FROM results WHERE key = ?",
                                   (key,)).fetchone()
        if row is None:
            return None
        return Entry(json.loads(row[0]), self._payload(key, *row[1:]))

    def iter_sizes(self, keys: Iterable[str]) -> Iterator[tuple[str, dict[str, Any], int]]:
        """(key, meta, payload size) of each key, without reading a payload."""
        for key, (meta, size) in self._rows(keys, "COALESCE(file_size, length(data))"):
            yield key, loads_json(meta), size

    def _rows(self, keys: Iterable[str], columns: str) -> Iterator[tuple[str, tuple]]:
        """(key, (meta, *columns)) in the order of `keys`, fetched 500 at a time (one query per key
        was most of assembling a large corpus's outs)."""
        conn, it = self._conn(), iter(keys)
        while batch := list(itertools.islice(it, 500)):
            found = {r[0]: r[1:] for r in conn.execute(
                f"SELECT key, meta, {columns} FROM results WHERE key IN ({','.join('?' * len(set(batch)))})",
                list(dict.fromkeys(batch)))}
            for key in batch:
                if key not in found:
                    raise KeyError(f"{self.path}: cache entry {key} vanished while assembling the outs")
                yield key, found[key]

    def payload(self, key: str) -> bytes:
        entry = self.get(key)
        if entry is None:
            raise KeyError(f"{self.path}: cache entry {key} vanished while assembling the outs")
        return entry.data

    def put_many(self, items: Iterable[tuple[str, Entry]]) -> None:
        rows, packed = [], []
        for key, entry in items:
            meta = json.dumps(entry.meta, sort_keys=True)
            if len(entry.data) >= FILE_BYTES:
                packed.append((key, meta, entry.data))
            else:
                rows.append((key, meta, entry.data, None, None, None))
        if packed:  # the pack first, outside the write lock
            # A fresh name each write: two writers of the same keys (a retried task, two stage
            # processes) must not replace the pack the other's committed rows point into.
            name = uuid.uuid4().hex + ".pack"
            self._write_pack(name, [data for _, _, data in packed])
            offset = 0
            for key, meta, data in packed:
                rows.append((key, meta, b"", len(data), name, offset))
                offset += len(data)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO results (key, meta, data, file_size, pack, pack_offset) "
                             "VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _file(self, key: str) -> Path:
        name = hashlib.sha256(key.encode()).hexdigest()  # any key becomes a safe file name
        return self.blob_dir / name[:2] / name

    def _pack(self, name: str) -> Path:
        return self.blob_dir / name[:2] / name

    def _write_pack(self, name: str, payloads: list[bytes]) -> None:
        # No fsync, like the database (synchronous=NORMAL): a SIGKILL keeps what the OS has; a
        # power cut may truncate a file, and _payload's size check turns that into a clear error.
        path = self._pack(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            for data in payloads:
                f.write(data)
        os.replace(tmp, path)

    def _payload(self, key: str, data: bytes, size: Optional[int], pack: Optional[str],
                 offset: Optional[int]) -> bytes:
        if size is None:
            return bytes(data)
        path = self._file(key) if pack is None else self._pack(pack)
        try:
            with open(path, "rb") as f:
                f.seek(offset or 0)
                out = f.read(size)
        except FileNotFoundError:
            out = None
        if out is None or len(out) != size:
            raise CacheError(f"{path}: payload of cache entry {key} is missing or truncated (expected {size} bytes "
                             f"at {offset or 0}); delete {self.path} and {self.blob_dir} to rebuild this stage's cache")
        return out

    def iter_entries(self, keys: Iterable[str]) -> Iterator[tuple[str, Entry]]:
        for key, (meta, *payload) in self._rows(keys, "data, file_size, pack, pack_offset"):
            yield key, Entry(loads_json(meta), self._payload(key, *payload))

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM results").fetchone()[0]


class FileHashes:
    """sha256 of files, remembered by (path, size, mtime, inode) as DVC's state database does, so
    unchanged source audio and model folders are read once, not by every stage run that needs
    their hashes. A ResultCache keyed by path."""

    def __init__(self, path: Path):
        self._db = ResultCache(path)
        self._folders: dict[str, dict[str, str]] = {}  # folder -> {path: meta JSON} of what is remembered

    @classmethod
    def in_dir(cls, cache_dir: Path) -> "FileHashes":
        return cls(Path(cache_dir) / "file-hashes.sqlite")

    def sha256(self, path: Path) -> str:
        path = os.path.abspath(path)  # not resolve(): a realpath per file was most of a 10k-file plan
        st = os.stat(path)
        stat = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        known = self._folder(path)
        if path in known:
            meta = loads_json(known[path])
            if meta["stat"] == stat:
                return meta["sha256"]
        digest = file_sha256(Path(path))
        entry = Entry({"stat": stat, "sha256": digest}, b"")
        self._db.put_many([(path, entry)])
        known[path] = json.dumps(entry.meta)
        return digest

    def _folder(self, path: str) -> dict[str, str]:
        """{path: meta JSON} remembered for the files beside `path`. A corpus's files are looked up
        thousands at a time, so a whole folder's rows come in one range query ('/' + 1 is '0')."""
        folder = os.path.dirname(path) + "/"
        if folder not in self._folders:
            rows = self._db._conn().execute("SELECT key, meta FROM results WHERE key >= ? AND key < ?",
                                            (folder, folder[:-1] + "0"))
            self._folders[folder] = {key: meta for key, meta in rows if os.path.dirname(key) + "/" == folder}
        return self._folders[folder]

"""A content-addressed cache of per-utterance results, one SQLite file per stage.

A result is stored under the sha256 of everything it depends on (input hashes, params, library and
frontend versions), so a stage recomputes exactly the utterances whose inputs changed, and a stage
killed half way finds its finished work here when run again. Each batch of results is one
transaction: a SIGKILL loses at most the batch in flight, never corrupts what was committed.
The cache lives outside DVC's outs (it is a speed-up, not an artifact): deleting it costs time only.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

SCHEMA = "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, meta TEXT NOT NULL, data BLOB NOT NULL)"


def cache_key(**parts: Any) -> str:
    """The sha256 of `parts` as canonical JSON: the same dependencies give the same key anywhere."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Entry:
    meta: dict[str, Any]  # small JSON: shapes, a reject reason, ...
    data: bytes  # the payload (PCM, fp16 features, ...)


class ResultCache:
    """Thread-safe: one connection per thread; WAL lets readers run while a writer commits."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
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
        row = self._conn().execute("SELECT meta, data FROM results WHERE key = ?", (key,)).fetchone()
        return None if row is None else Entry(json.loads(row[0]), bytes(row[1]))

    def put_many(self, items: Iterable[tuple[str, Entry]]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO results (key, meta, data) VALUES (?, ?, ?)",
                             [(k, json.dumps(e.meta, sort_keys=True), e.data) for k, e in items])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def iter_entries(self, keys: Iterable[str]) -> Iterator[tuple[str, Entry]]:
        for key in keys:
            entry = self.get(key)
            if entry is None:
                raise KeyError(f"{self.path}: cache entry {key} vanished while assembling the outs")
            yield key, entry

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM results").fetchone()[0]

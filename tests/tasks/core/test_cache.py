import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasks.core.cache import FILE_BYTES, CacheError, Entry, ResultCache, cache_key, cache_key_with


def test_a_key_depends_on_every_part_and_not_on_their_order():
    assert cache_key(a=1, b={"x": [1, 2]}) == cache_key(b={"x": [1, 2]}, a=1)
    assert cache_key(a=1, b=2) != cache_key(a=1, b=3)


def test_entries_round_trip_and_missing_keys_are_reported(tmp_path):
    cache = ResultCache(tmp_path / "c.sqlite")
    cache.put_many([("k1", Entry({"n": 1}, b"abc"))])
    assert cache.get("k1") == Entry({"n": 1}, b"abc") and cache.get("k2") is None
    assert cache.missing(["k1", "k2", "k2"]) == {"k2"} and len(cache) == 1


def test_a_writer_killed_mid_batch_leaves_every_committed_batch_intact(tmp_path):
    path = tmp_path / "c.sqlite"
    script = textwrap.dedent(f"""
        import itertools
        from tasks.core.cache import Entry, ResultCache
        cache = ResultCache({str(path)!r})
        for batch in itertools.count():
            cache.put_many([(f"{{batch}}-{{i}}", Entry({{"b": batch}}, bytes(10000))) for i in range(50)])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=os.getcwd())
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.3)
        if path.exists() and len(ResultCache(path)) >= 500:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    cache = ResultCache(path)
    n = len(cache)
    assert n >= 500 and n % 50 == 0  # whole batches only
    batches = n // 50
    assert not cache.missing(f"{b}-{i}" for b in range(batches) for i in range(50))


def test_large_payloads_live_in_files_and_small_ones_in_the_database(tmp_path):
    cache = ResultCache(tmp_path / "c.sqlite")
    big, small = os.urandom(FILE_BYTES), b"x" * (FILE_BYTES - 1)
    cache.put_many([("big", Entry({"n": 1}, big)), ("small", Entry({}, small))])
    files = [p for p in (tmp_path / "c.blobs").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].read_bytes() == big and not list(tmp_path.rglob("*.tmp"))
    again = ResultCache(tmp_path / "c.sqlite")  # a new process sees the same entries
    assert again.get("big") == Entry({"n": 1}, big) and again.get("small") == Entry({}, small)


def test_a_truncated_payload_file_is_a_clear_error_naming_the_file(tmp_path):
    cache = ResultCache(tmp_path / "c.sqlite")
    cache.put_many([("big", Entry({}, bytes(FILE_BYTES)))])
    [path] = [p for p in (tmp_path / "c.blobs").rglob("*") if p.is_file()]
    path.write_bytes(bytes(10))
    with pytest.raises(CacheError, match=f"{path}.*truncated.*delete"):
        cache.get("big")


def test_a_batch_of_large_payloads_is_one_pack_file_and_each_reads_back_alone(tmp_path):
    cache = ResultCache(tmp_path / "c.sqlite")
    payloads = {f"k{i}": os.urandom(FILE_BYTES + i) for i in range(5)}
    cache.put_many([(k, Entry({"i": k}, v)) for k, v in payloads.items()] + [("small", Entry({}, b"s"))])
    [pack] = [p for p in (tmp_path / "c.blobs").rglob("*") if p.is_file()]
    assert pack.read_bytes() == b"".join(payloads.values()) and not list(tmp_path.rglob("*.tmp"))
    again = ResultCache(tmp_path / "c.sqlite")
    assert all(again.get(k) == Entry({"i": k}, v) for k, v in payloads.items())
    assert dict(again.iter_entries(["k3", "small", "k0"])) == {
        "k3": Entry({"i": "k3"}, payloads["k3"]), "small": Entry({}, b"s"), "k0": Entry({"i": "k0"}, payloads["k0"])}
    assert [(k, size) for k, _, size in again.iter_sizes(["k4", "k0"])] == [("k4", FILE_BYTES + 4), ("k0", FILE_BYTES)]
    pack.write_bytes(pack.read_bytes()[:3 * FILE_BYTES])  # k0, k1 whole (2F + 1 bytes), k2 3 bytes short, k3, k4 gone
    assert again.get("k1").data == payloads["k1"]
    with pytest.raises(CacheError, match=f"{pack}.*k2.*truncated.*at {2 * FILE_BYTES + 1}"):
        again.get("k2")
    with pytest.raises(CacheError, match=f"{pack}.*k3.*truncated.*at {3 * FILE_BYTES + 3}"):
        again.get("k3")


def test_putting_the_same_keys_twice_keeps_the_first_pack_until_its_rows_are_replaced(tmp_path):
    """Two writers of one batch (a retried task): each writes its own pack, so the rows the first
    committed never point into a file the second is replacing."""
    cache = ResultCache(tmp_path / "c.sqlite")
    first, second = os.urandom(FILE_BYTES), os.urandom(FILE_BYTES)
    cache.put_many([("k", Entry({}, first))])
    cache.put_many([("k", Entry({}, second))])
    packs = [p for p in (tmp_path / "c.blobs").rglob("*.pack")]
    assert len(packs) == 2 and sorted(p.read_bytes() for p in packs) == sorted([first, second])
    assert cache.get("k").data == second


def test_a_cache_with_one_file_a_payload_reads_as_it_did_and_takes_packs_beside(tmp_path):
    """The layout before packs: file_size set, the payload alone in the file named by the key's hash."""
    import hashlib

    path, blob = tmp_path / "c.sqlite", os.urandom(FILE_BYTES)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE results (key TEXT PRIMARY KEY, meta TEXT NOT NULL, data BLOB NOT NULL, "
                     "file_size INTEGER)")
        conn.execute("INSERT INTO results VALUES ('old', '{}', x'', ?)", (len(blob),))
    name = hashlib.sha256(b"old").hexdigest()
    (tmp_path / "c.blobs" / name[:2]).mkdir(parents=True)
    (tmp_path / "c.blobs" / name[:2] / name).write_bytes(blob)
    cache = ResultCache(path)
    cache.put_many([("new", Entry({}, b"n" * FILE_BYTES))])
    assert cache.get("old").data == blob and cache.get("new").data == b"n" * FILE_BYTES


def test_a_cache_from_before_payload_files_is_upgraded_in_place(tmp_path):
    path = tmp_path / "c.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE results (key TEXT PRIMARY KEY, meta TEXT NOT NULL, data BLOB NOT NULL)")
        conn.execute("INSERT INTO results VALUES ('old', '{}', ?)", (bytes(FILE_BYTES),))
    cache = ResultCache(path)
    cache.put_many([("new", Entry({}, b"y" * FILE_BYTES))])
    assert cache.get("old").data == bytes(FILE_BYTES) and cache.get("new").data == b"y" * FILE_BYTES


def test_processes_opening_a_new_cache_at_once_all_get_it(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(4) as pool:
        for round in range(40):  # the race (a new file switched to WAL by two at once) is rare: try often
            path = str(tmp_path / f"c{round}.sqlite")
            pool.map(_put_one, [(path, i) for i in range(16)])
            assert len(ResultCache(path)) == 16


def _put_one(args):
    path, i = args
    ResultCache(path).put_many([(f"k{i}", Entry({}, bytes(i)))])


def test_file_hashes_are_remembered_until_the_file_changes(tmp_path):
    from tasks.core.cache import FileHashes
    from tasks.core.storage import file_sha256

    f = tmp_path / "weights.bin"
    f.write_bytes(b"a" * 1000)
    hashes = FileHashes.in_dir(tmp_path)
    assert hashes.sha256(f) == file_sha256(f)
    db = ResultCache(tmp_path / "file-hashes.sqlite")
    [(key, entry)] = db.iter_entries([str(f.resolve())])
    db.put_many([(key, Entry({**entry.meta, "sha256": "remembered"}, b""))])  # a stale memo is believed...
    assert FileHashes.in_dir(tmp_path).sha256(f) == "remembered"
    f.write_bytes(b"b" * 1001)  # ...until the file's size, mtime or inode changes
    assert FileHashes.in_dir(tmp_path).sha256(f) == file_sha256(f)


def test_a_model_fingerprint_is_the_same_with_and_without_the_memo(tmp_path):
    from tasks.core.config import BertConfig
    from tasks.core.hf import _folder_hashes, model_hash

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "vocab.txt").write_text("a\nb\n")
    bert = BertConfig(model=str(model))
    plain = model_hash(tmp_path, bert)
    _folder_hashes.clear()  # the process remembers a folder's hash: make the memo path compute it
    assert model_hash(tmp_path, bert, memo=tmp_path / "cache") == plain
    (model / "config.json").write_text('{"changed": 1}')
    assert model_hash(tmp_path, bert, memo=tmp_path / "cache") != plain


def test_keys_with_fixed_parts_are_the_keys_of_all_parts():
    fixed = {"stage": "x-1", "libs": {"b": "2.0", "a": "ü"}, "stft": {"n_fft": 1024, "fmax": None}, "p": Path("a/b")}
    keyer = cache_key_with(**fixed)
    for parts in [{"text": "こんにちは", "word2ph": [1, 2, 3]}, {"audio": "ab" * 32}, {}, {"a": {"z": 1, "y": [0.5]}}]:
        assert keyer(**parts) == cache_key(**fixed, **parts)
    assert keyer(text="a") != keyer(text="b")


def test_keys_stay_the_sha256_of_canonical_json_so_existing_caches_keep_their_keys():
    import hashlib
    import json

    for parts in [{"word2ph": [1, 2, 3], "text": "naïve \"q\" \\ \n"}, {"w": [True, 1]}, {"w": [1, "2"]}, {"w": []},
                  {"w": [-7, 10**20]}, {"f": [1.0, 2]}, {"d": {"b": [2], "a": None}}, {"p": Path("x/y")}]:
        canonical = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        assert cache_key(**parts) == hashlib.sha256(canonical.encode()).hexdigest(), parts


def test_metadata_with_nan_which_only_json_reads_comes_back_intact(tmp_path):
    cache = ResultCache(tmp_path / "c.sqlite")
    cache.put_many([("nan", Entry({"x": float("nan"), "y": [1.5]}, b"")), ("ok", Entry({"n": 2**62}, b""))])
    (_, nan), (_, ok) = cache.iter_entries(["nan", "ok"])
    assert nan.meta["x"] != nan.meta["x"] and nan.meta["y"] == [1.5] and ok.meta == {"n": 2**62}
    assert [meta for _, meta, _ in cache.iter_sizes(["ok"])] == [{"n": 2**62}]

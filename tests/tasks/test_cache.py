import os
import signal
import subprocess
import sys
import textwrap
import time

from tasks.cache import Entry, ResultCache, cache_key


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
        from tasks.cache import Entry, ResultCache
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

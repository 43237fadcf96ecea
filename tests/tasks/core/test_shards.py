"""Sharded outs: content-defined shard boundaries, and unchanged shards reused from the previous outs."""
import hashlib
import json
import os
from functools import partial

import numpy as np
import pytest

from tasks.core.shards import SHARD_TABLE, ShardWriter, read_record

TARGET = 64 * 1024


def records(n: int, seed: int = 0, prefix: str = "utt") -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    return [(f"{prefix}{i:05d}", rng.bytes(int(rng.integers(1_000, 8_000)))) for i in range(n)]


def write(out, recs, reuse_from=None, content_names=False) -> tuple[ShardWriter, list[dict]]:
    with ShardWriter(out, "s", ".bin", TARGET, reuse_from=reuse_from, content_names=content_names) as w:
        locs = [w.append(data, key) for key, data in recs]
    return w, locs


def test_records_read_back_and_shards_stay_between_an_eighth_and_four_times_the_target(tmp_path):
    recs = records(400)
    w, locs = write(tmp_path / "a", recs)
    assert [read_record(tmp_path / "a", loc) for loc in locs] == [data for _, data in recs]
    sizes = [entry["bytes"] for entry in json.loads((tmp_path / "a" / SHARD_TABLE).read_text()).values()]
    assert len(sizes) > 10 and all(TARGET // 8 <= s <= 4 * TARGET for s in sizes[:-1])
    assert 0.6 * TARGET < np.mean(sizes) < 1.6 * TARGET


def test_inserting_records_early_changes_only_the_shards_they_land_in(tmp_path):
    recs = records(400)
    inserted = recs[:30] + records(4, seed=9, prefix="new") + recs[30:]
    before, _ = write(tmp_path / "a", recs)
    after, _ = write(tmp_path / "b", inserted)
    same = set(e["sha256"] for e in before.table.values()) & set(e["sha256"] for e in after.table.values())
    assert len(same) >= len(before.table) - 2  # the shard with the insertion, and at most one more


def test_adding_a_block_of_records_rewrites_one_or_two_shards_not_a_cascade(tmp_path):
    """As `ingest` sees a dataset grow by 1% of the corpus: a run of new records in one place. With a
    minimum shard size of half the target, the shards after the insertion re-cut differently for
    several shards (5 of 20 at 10k utterances); boundaries must resynchronise at once."""
    changed = []
    for seed in range(12):
        recs = records(600, seed=seed)
        block = records(40, seed=100 + seed, prefix=f"new{seed}")  # about half a target's bytes
        at = 100 + 35 * seed
        before, _ = write(tmp_path / f"a{seed}", recs)
        after, _ = write(tmp_path / f"b{seed}", recs[:at] + block + recs[at:])
        kept = {e["sha256"] for e in before.table.values()} & {e["sha256"] for e in after.table.values()}
        changed.append(len(before.table) - len(kept))
    assert max(changed) <= 2 and sum(changed) <= 12 * 1.5, changed


def test_unchanged_shards_are_hard_linked_from_the_previous_outs_and_changed_ones_written(tmp_path):
    recs = records(400)
    first, _ = write(tmp_path / "out", recs)
    again, _ = write(tmp_path / "again", recs, reuse_from=tmp_path / "out")
    assert again.reused == len(first.names)
    for name in first.names:
        assert os.path.samefile(tmp_path / "out" / name, tmp_path / "again" / name)

    changed = list(recs)
    changed[300] = (changed[300][0], b"x" * len(changed[300][1]))
    third, locs = write(tmp_path / "third", changed, reuse_from=tmp_path / "out")
    hit = locs[300]["shard"]
    assert third.reused == len(first.names) - 1 and not os.path.samefile(tmp_path / "out" / hit, tmp_path / "third" / hit)
    assert read_record(tmp_path / "third", locs[300]) == changed[300][1]
    # the layout does not depend on what was reused: a fresh build gives the same bytes
    fresh, _ = write(tmp_path / "fresh", changed)
    assert fresh.table == third.table
    assert (tmp_path / "fresh" / SHARD_TABLE).read_bytes() == (tmp_path / "third" / SHARD_TABLE).read_bytes()


def test_a_tampered_previous_shard_is_not_reused(tmp_path):
    recs = records(200)
    first, _ = write(tmp_path / "out", recs)
    victim = tmp_path / "out" / first.names[0]
    victim.write_bytes(victim.read_bytes()[:-1])  # not the size its shard table records
    again, locs = write(tmp_path / "again", recs, reuse_from=tmp_path / "out")
    assert again.reused == len(first.names) - 1
    assert read_record(tmp_path / "again", locs[0]) == recs[0][1]


def test_with_content_names_shards_after_an_insertion_keep_their_names_and_files(tmp_path):
    recs = records(400)
    first, _ = write(tmp_path / "out", recs, content_names=True)
    inserted = recs[:30] + records(4, seed=9, prefix="new") + recs[30:]
    second, locs = write(tmp_path / "next", inserted, reuse_from=tmp_path / "out", content_names=True)
    assert second.reused >= len(first.names) - 2
    kept = [n for n in second.names if (tmp_path / "out" / n).exists()
            and os.path.samefile(tmp_path / "out" / n, tmp_path / "next" / n)]
    assert len(kept) == second.reused
    assert [read_record(tmp_path / "next", loc) for loc in locs] == [data for _, data in inserted]


def write_cached(out, recs, reuse_from=None) -> tuple[ShardWriter, list[dict], list[str]]:
    """Records by reference, keyed by their content; returns the keys whose payload was fetched."""
    fetched = []

    def fetch(key, data):
        fetched.append(key)
        return data

    with ShardWriter(out, "s", ".bin", TARGET, reuse_from=reuse_from, content_names=True) as w:
        locs = [w.append_cached(len(data), key, hashlib.sha256(data).hexdigest(), partial(fetch, key, data))
                for key, data in recs]
    return w, locs, fetched


def test_cached_records_of_an_unchanged_shard_are_never_fetched(tmp_path):
    recs = records(400)
    first, _, fetched = write_cached(tmp_path / "out", recs)
    assert len(fetched) == 400
    inserted = recs[:30] + records(4, seed=9, prefix="new") + recs[30:]
    second, locs, fetched = write_cached(tmp_path / "next", inserted, reuse_from=tmp_path / "out")
    assert second.reused >= len(first.names) - 2
    assert len(fetched) < 404 * 3 / len(first.names)  # only the records of the shards that changed
    assert [read_record(tmp_path / "next", loc) for loc in locs] == [data for _, data in inserted]
    fresh, _, _ = write_cached(tmp_path / "fresh", inserted)
    assert (tmp_path / "fresh" / SHARD_TABLE).read_bytes() == (tmp_path / "next" / SHARD_TABLE).read_bytes()


def test_a_cached_record_of_another_size_than_announced_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="3 bytes, 4 were announced"):
        with ShardWriter(tmp_path / "out", "s", ".bin", TARGET) as w:
            w.append_cached(4, "utt", "key", lambda: b"abc")


def test_jsonl_rows_are_sorted_compact_utf8_and_read_back_and_nan_is_refused(tmp_path):
    import math

    from tasks.core.shards import jsonl_row, read_jsonl, write_jsonl

    rows = [{"b": "ça\n\"null\"", "a": [1, 2.5], "c": None}, {"z": {"y": 1, "x": -0.125}}]
    assert jsonl_row(rows[0]) == '{"a":[1,2.5],"b":"ça\\n\\"null\\"","c":null}'.encode()
    assert write_jsonl(tmp_path / "r.jsonl", rows) == 2
    assert list(read_jsonl(tmp_path / "r.jsonl")) == rows
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            jsonl_row({"x": [1.0, bad]})

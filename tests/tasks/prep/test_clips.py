"""tasks/prep/clips.py: the side stages' rejects, read back from their caches."""
from tasks.core.cache import Entry, ResultCache
from tasks.prep.clips import ClipTooShort, rejected, short_clip


def test_rejected_finds_the_reject_entries_only_and_a_missing_key_is_none(tmp_path):
    cache = ResultCache(tmp_path / "c.sqlite")
    row = {"id": "ds/clip_7", "dataset": "ds"}
    cache.put_many([("a", Entry({"frames": 3}, b"xyz")), ("b", short_clip(row, ClipTooShort("0.20 s is short"))),
                    ("c", Entry({"note": "reject"}, b"1"))])
    keys = ["a", "b", "c", "missing"] + [f"k{i}" for i in range(600)]  # more than one 500-key query
    assert rejected(cache, keys) == {"b": "clip 'ds/clip_7' (dataset 'ds'): 0.20 s is short; raise params "
                                          "audio.min_seconds so that ingest drops clips this short"}
    assert cache.get("b").data == b""

"""The side stages' clips (`waveglow`, `asr`, `vc`): a clip too short for their features is the
stage's reject, a cache entry naming the clip and the reason; the trainers leave such clips out
and the stage's record lists them (flows/stages.py)."""
from __future__ import annotations

from typing import Any, Iterable

from tasks.core.cache import Entry, ResultCache


class ClipTooShort(ValueError):
    """A clip with too few samples for a side stage's features (the mel's STFT, the F0 frames, a
    reference's 32 mel frames)."""


def short_clip(row: dict[str, Any], err: Exception) -> Entry:
    """The cache entry of a clip too short for a side stage's features: a reject naming the clip,
    its dataset, the reason and the setting that keeps such clips out. The stage goes on without
    it and lists it in its record (the waveglow, asr and vc stages)."""
    return Entry({"reject": f"clip {row.get('id')!r} (dataset {row.get('dataset')!r}): {err}; raise params "
                            "audio.min_seconds so that ingest drops clips this short"}, b"")


def rejected(cache: ResultCache, keys: Iterable[str]) -> dict[str, str]:
    """{key: reason} of those `keys` whose entry in a side stage's cache is a reject (`short_clip`);
    a key not in the cache is not one. (Here, not in tasks/core/cache.py: the cache's code is in
    every stage's key, and a method there would make the ingest, text, bert and spec stages
    compute everything once more; this file is in the side stages' keys only.)"""
    keys = list(dict.fromkeys(keys))
    missing = cache.missing(keys)
    return {key: meta["reject"] for key, meta, _ in cache.iter_sizes(k for k in keys if k not in missing)
            if "reject" in meta}

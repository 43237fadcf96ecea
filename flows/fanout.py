"""Fan a stage's work out over Prefect tasks, a chunk of items per task, with a progress bar.

Only the items whose cache key is missing are computed; each chunk's results are committed to the
stage's cache as they arrive, so an interrupted run resumes where it stopped. A bounded window of
chunks is in flight at once, so memory stays flat however large the corpus.
"""
from __future__ import annotations

import sys
from collections import deque
from typing import Any, Callable, Optional, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tasks.core.cache import ResultCache


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=sys.stderr))


def fill_cache(task: Any, items: Sequence[Any], cache: ResultCache, chunk_size: int, window: int,
               description: str, chunker: Optional[Callable[[list], list[list]]] = None, **kwargs: Any) -> int:
    """Run `task(chunk, **kwargs) -> [(key, Entry)]` over the items whose `.key` is not cached, in
    chunks of `chunk_size` items, or as `chunker(todo)` cuts them (bert: whole batches).

    Returns how many items were computed (the rest were cache hits)."""
    missing = cache.missing(item.key for item in items)
    todo = [item for item in items if item.key in missing]
    todo = list({item.key: item for item in todo}.values())  # identical inputs are computed once
    chunks = chunker(todo) if chunker else [todo[s:s + chunk_size] for s in range(0, len(todo), chunk_size)]
    pending: deque = deque()
    with progress_bar() as progress:
        bar = progress.add_task(f"{description} ({len(items) - len(todo)} cached)", total=len(todo))
        for chunk in chunks:
            pending.append((len(chunk), task.submit(chunk, **kwargs)))
            if len(pending) >= window:
                _drain_one(pending, cache, progress, bar)
        while pending:
            _drain_one(pending, cache, progress, bar)
    return len(todo)


def _drain_one(pending: deque, cache: ResultCache, progress: Progress, bar: Any) -> None:
    n, future = pending.popleft()
    cache.put_many(future.result())
    progress.advance(bar, n)

"""Fan a stage's work out over Prefect tasks, a chunk of items per task, with a progress bar.

A bounded window of chunks is in flight at once, so memory stays flat however large the corpus;
results come back in submission order, so the outs are identical whatever the concurrency.
"""
from __future__ import annotations

import sys
from collections import deque
from typing import Any, Callable, Iterator, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def progress_bar() -> Progress:
    from rich.console import Console

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(file=sys.stderr), transient=False)


def run_chunks(task: Any, items: Sequence[Any], chunk_size: int, window: int, description: str,
               on_result: Callable[[Any], None], **kwargs: Any) -> None:
    """Submit `task(chunk, **kwargs)` per chunk; hand each chunk's result to `on_result` in order."""
    pending: deque = deque()
    with progress_bar() as progress:
        bar = progress.add_task(description, total=len(items))
        for chunk in chunked(items, chunk_size):
            pending.append((len(chunk), task.submit(chunk, **kwargs)))
            if len(pending) >= window:
                _drain_one(pending, progress, bar, on_result)
        while pending:
            _drain_one(pending, progress, bar, on_result)


def _drain_one(pending: deque, progress: Progress, bar: Any, on_result: Callable[[Any], None]) -> None:
    n, future = pending.popleft()
    on_result(future.result())
    progress.advance(bar, n)

"""Stage `spec`: the linear spectrogram of every ingested utterance, with the model's own STFT.

With `features.spec.cache: true` the stage stores it as fp16 in shards; with `false` it stores
only each utterance's frame count and the data loader computes the spectrogram on the fly through
the same `model.mel_processing` functions. The mel is not stored: the trainer computes it from the
linear spectrogram of each batch (`spec_to_mel`), as upstream's train_ms.py does, so storing it
cost the stage a mel per utterance and 8% more bytes that nothing read. Each utterance is
transformed on its own (no batch padding), so its spectrogram is a function of its audio alone.

Outs: `spec-*.bin` shards (linear [frames, n_fft/2+1] fp16), `index.jsonl` (id, frames, shard
location), `meta.json` (the STFT params), `summary.json`.
"""
from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.cache import Entry, ResultCache, cache_key_with
from tasks.core.code import code_hash
from tasks.core.config import Params
from tasks.core.shards import RecordReader, ShardWriter, read_record, write_jsonl
from tasks.core.storage import atomic_write_bytes


def stft_settings(params: Params) -> dict[str, Any]:
    """The STFT params as a plain dict: what keys and meta.json need, without importing torch."""
    s = params.features.spec
    return {"sample_rate": params.audio.sample_rate, "n_fft": s.n_fft, "hop_length": s.hop_length,
            "win_length": s.win_length, "n_mels": s.n_mels, "fmin": s.fmin, "fmax": s.fmax}


def stft_params(params: Params):
    from model.mel_processing import STFTParams

    return STFTParams(**stft_settings(params))


@dataclass(frozen=True)
class SpecItem:
    row: dict[str, Any]  # an ingest index row
    key: str


def plan_spec(rows: list[dict[str, Any]], params: Params) -> list[SpecItem]:
    from importlib.metadata import version

    key = cache_key_with(code=code_hash(__name__), stft=stft_settings(params), torch=version("torch"))
    return [SpecItem(row, key(audio=row["sha256"])) for row in rows]


class SpecProcesses:
    """`n` worker processes that compute chunks and commit them to the stage's cache.

    Processes, because threads do not scale here: an utterance is a dozen small torch ops, each
    allocating and freeing a few hundred KB, and two threads contend for the allocator and the GIL
    (1.4x on 2 cores, against 2.0x for two processes). Each worker writes its results to the cache
    itself, so the ~200 KB per utterance reach the disk once instead of crossing a pipe first.

    Workers fork from a forkserver, a clean process that has imported torch once (about a second,
    paid once per stage run), never from the stage: it
    holds SQLite connections, and SQLite state copied by fork() confuses its file locks (it showed
    as "file is not a database" in a worker)."""

    def __init__(self, n: int, cache_path: Path):
        self.n, self.cache_path = n, str(cache_path)
        ResultCache(Path(cache_path))  # created (schema, WAL) once here, not by the workers at once
        self._pool = None

    def __enter__(self) -> "SpecProcesses":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def store_chunk(self, items: list[SpecItem], ingest_dir: Path, settings: dict[str, Any]) -> None:
        pool = self._get_pool()
        try:
            pool.submit(_store_chunk, self.cache_path, items, ingest_dir, settings).result()
        except BrokenProcessPool:
            with _pool_lock:  # a worker died (killed, out of memory): the task's retry gets a new pool
                if self._pool is pool:
                    self._pool = None
            raise

    def _get_pool(self):
        with _pool_lock:
            if self._pool is None:
                import os
                from concurrent.futures import ProcessPoolExecutor

                self._pool = ProcessPoolExecutor(self.n, _forkserver(), _worker_init, (os.getpid(),))
            return self._pool


def _forkserver():
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "model.mel_processing", __name__])
    return context


_pool_lock = threading.Lock()


def _worker_init(stage_pid: int) -> None:
    threading.Thread(target=_exit_with, args=(stage_pid,), daemon=True).start()


def _exit_with(pid: int) -> None:
    """Exit when the stage process does: a SIGKILLed stage must leave no workers. (Neither the pool's
    queues nor the forkserver tell them: each worker holds both ends of those pipes itself.)"""
    import os
    import select
    import time

    try:
        select.select([os.pidfd_open(pid)], [], [])  # readable once the process has exited
    except (AttributeError, OSError):  # no pidfd (not Linux, or an old kernel): poll
        while True:
            time.sleep(1)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
    os._exit(1)


_worker_cache: dict[str, ResultCache] = {}


def _store_chunk(cache_path: str, items: list[SpecItem], ingest_dir: Path, settings: dict[str, Any]) -> None:
    if cache_path not in _worker_cache:
        _worker_cache[cache_path] = ResultCache(Path(cache_path))
    _worker_cache[cache_path].put_many(spec_chunk(items, ingest_dir, settings))


def spec_chunk(items: list[SpecItem], ingest_dir: Path, settings: dict[str, Any]) -> list[tuple[str, Entry]]:
    import torch

    from model.mel_processing import STFTParams

    # One intra-op thread, always: with more, MKL splits some GEMM shapes differently and the mel's
    # last bit would depend on the machine's core count. Parallelism is across utterances instead.
    # (The stage never runs two chunks in one process at once: threads=1, Dask or SpecProcesses.)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p = STFTParams(**settings)
        with RecordReader(ingest_dir) as shards:
            return [(item.key, _spec_entry(shards.pcm(item.row), p)) for item in items]
    finally:
        torch.set_num_threads(threads)


def _spec_entry(pcm: np.ndarray, p) -> Entry:
    import torch

    from model.mel_processing import pcm16_linear_spectrogram

    linear = pcm16_linear_spectrogram(torch.from_numpy(pcm), p)[0]
    # Time-major, because torch.stft's output already is: storing [frames, bins] is one fp16
    # copy, where [bins, frames] would cost a transpose.
    return Entry({"frames": linear.shape[1]}, linear.T.to(torch.float16).numpy().tobytes())


def assemble(items: list[SpecItem], cache: ResultCache | None, out_dir: Path, params: Params) -> dict[str, Any]:
    """Write the outs; with caching off (`cache` None) only frame counts and the STFT params."""
    p = stft_settings(params)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = []
    n_freq = p["n_fft"] // 2 + 1
    if cache is None:
        rows = [{"id": i.row["id"], "frames": i.row["num_samples"] // p["hop_length"]} for i in items]
        n_shards = 0
    else:
        with ShardWriter(tmp, "spec", ".bin", params.features.spec.shard_mb * 2**20,
                         reuse_from=out_dir, content_names=True) as shards:
            for item, (key, meta, nbytes) in zip(items, cache.iter_sizes(i.key for i in items)):
                loc = shards.append_cached(nbytes, item.row["id"], key, partial(cache.payload, key))
                rows.append({"id": item.row["id"], "frames": meta["frames"], **loc})
        n_shards = len(shards.names)
    write_jsonl(tmp / "index.jsonl", rows)
    meta = {"stft": p, "cached": cache is not None, "dtype": "float16", "n_freq": n_freq,
            "layout": LAYOUT}
    atomic_write_bytes(tmp / "meta.json", json.dumps(meta, indent=2, sort_keys=True).encode())
    frames = sum(r["frames"] for r in rows)
    summary = {"utterances": len(rows), "rejects": 0, "frames": frames, "shards": n_shards}
    atomic_write_bytes(tmp / "summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return summary


LAYOUT = "linear [frames, n_freq], row-major (time-major)"  # meta.json's "layout" of what read_linear reads


def read_linear(spec_dir: Path, row: dict[str, Any], meta: dict[str, Any]) -> np.ndarray:
    """One utterance's cached linear spectrogram, a [n_freq, frames] float16 view."""
    data = np.frombuffer(read_record(spec_dir, row), dtype=np.float16)
    return data.reshape(row["frames"], meta["n_freq"]).T

"""The pipeline's stages as Prefect flows: thin wrappers over `tasks`, one flow per DVC stage.

Without PREFECT_API_URL each run starts a temporary local server; with it, runs report to that
server and show in its UI.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.fanout import run_chunks
from tasks import ingest, text
from tasks.config import find_repo_root, load_params, resolve_local

# Chunk tasks are pure functions of their inputs, so a retry is always safe; retries cover
# transient storage errors (an s3:// dataset) rather than bad data, which becomes a reject.
RETRIES = dict(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)


@task(name="ingest-chunk", **RETRIES)
def ingest_chunk_task(chunk, storages, settings):
    return ingest.ingest_chunk(storages, list(chunk), settings)


@task(name="text-chunk", **RETRIES)
def text_chunk_task(chunk, params, root):
    return text.text_chunk(list(chunk), params, root)


def _log_summary(stage: str, summary: dict, started: float) -> dict:
    """Log the stage's summary; return it with the wall time (which the outs never contain)."""
    seconds = time.perf_counter() - started
    get_run_logger().info("%s: %d utterances, %d rejects, %.1f s (%.1f utt/s)\n%s", stage, summary["utterances"],
                          summary["rejects"], seconds, summary["utterances"] / max(seconds, 1e-9),
                          json.dumps(summary, indent=2))
    return {**summary, "seconds": round(seconds, 3)}


@flow(name="demo", log_prints=True)
def demo_flow(params_path: str = "params.yaml") -> dict:
    from tasks.demo import make_demo_corpus

    params = load_params(params_path)
    root = find_repo_root(Path(params_path))
    summary = make_demo_corpus(resolve_local(root, params.demo.sentences), resolve_local(root, params.demo.out))
    get_run_logger().info("demo corpus: %s", json.dumps(summary))
    return summary


@flow(name="ingest")
def ingest_flow(params_path: str = "params.yaml", out: str = "data/ingest") -> dict:
    started = time.perf_counter()
    params = load_params(params_path)
    root = find_repo_root(Path(params_path))
    plan = ingest.plan_ingest(params, root)  # a missing path or a broken list stops here, before any work
    writer = ingest.IngestWriter(resolve_local(root, out), params.ingest.shard_mb, params.audio.sample_rate)
    writer.rejects += plan.rejects
    run_chunks(ingest_chunk_task, plan.utterances, params.ingest.chunk_size, params.runtime.in_flight_chunks,
               "ingest", writer.add, storages=plan.storages, settings=ingest.audio_settings(params))
    return _log_summary("ingest", writer.finish(params), started)


@flow(name="text")
def text_flow(params_path: str = "params.yaml", ingest_dir: str = "data/ingest", out: str = "data/text") -> dict:
    started = time.perf_counter()
    params = load_params(params_path)
    root = find_repo_root(Path(params_path))
    rows = text.read_index(resolve_local(root, ingest_dir))
    writer = text.TextWriter(resolve_local(root, out), params.text.shard_mb)
    run_chunks(text_chunk_task, rows, params.text.chunk_size, params.runtime.in_flight_chunks,
               "text", writer.add, params=params, root=root)
    return _log_summary("text", writer.finish(params), started)


def with_workers(f, params_path: str):
    """The flow with a thread pool sized by params.runtime.workers."""
    return f.with_options(task_runner=ThreadPoolTaskRunner(max_workers=load_params(params_path).runtime.workers))

"""The pipeline's stages as Prefect flows: thin wrappers over `tasks`, one flow per DVC stage.

Without PREFECT_API_URL each run starts a temporary local server; with it, runs report to that
server and show in its UI. Stage modules are imported inside their flows: each stage runs in its
own process, and only `bert` and `text` should pay for importing torch and transformers.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.fanout import fill_cache
from tasks.core import paths
from tasks.core.cache import ResultCache
from tasks.core.config import Params, find_repo_root, load_params, resolve_local
from tasks.prep import ingest

# Chunk tasks are pure functions of their inputs, so a retry is always safe; retries cover
# transient storage errors (an s3:// dataset) rather than bad data, which becomes a reject.
RETRIES = dict(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)


@task(name="ingest-chunk", **RETRIES)
def ingest_chunk_task(chunk, storages, settings):
    return ingest.ingest_chunk(storages, chunk, settings)


@task(name="text-chunk", **RETRIES)
def text_chunk_task(chunk, params, root):
    from tasks.prep import text

    return text.text_chunk(chunk, params, root)


def stage_cache(params: Params, root: Path, stage: str) -> ResultCache:
    return ResultCache(resolve_local(root, params.runtime.cache_dir) / f"{stage}.sqlite")


@task(name="bert-chunk", **RETRIES)
def bert_chunk_task(chunk, params, root, device):
    from tasks.prep import bert

    return bert.bert_chunk(chunk, params, root, device)


@task(name="spec-chunk", **RETRIES)
def spec_chunk_task(chunk, ingest_dir, stft, processes):
    """With `processes` the chunk is computed and committed to the cache by a worker process, and
    nothing is left for the flow to commit."""
    from tasks.prep import spec

    if processes is not None:
        processes.store_chunk(chunk, ingest_dir, stft)
        return []
    return spec.spec_chunk(chunk, ingest_dir, stft)


def _log_summary(stage: str, summary: dict, started: float, computed: int) -> dict:
    """Log the stage's summary; return it with the wall time (which the outs never contain)."""
    seconds = time.perf_counter() - started
    get_run_logger().info("%s: %d utterances (%d computed, the rest cached), %d rejects, %.1f s\n%s",
                          stage, summary["utterances"], computed, summary["rejects"], seconds,
                          json.dumps(summary, indent=2))
    return {**summary, "seconds": round(seconds, 3), "computed": computed}


@flow(name="demo", log_prints=True)
def demo_flow(params_path: str = "params.yaml") -> dict:
    from tasks.prep.demo import make_demo_corpus

    params = load_params(params_path)
    root = find_repo_root(Path(params_path))
    summary = make_demo_corpus(resolve_local(root, params.demo.sentences), resolve_local(root, params.demo.out))
    get_run_logger().info("demo corpus: %s", json.dumps(summary))
    return summary


@flow(name="prepare")
def prepare_flow(params_path: str = "params.yaml", out: str = paths.PREPARED) -> dict:
    from tasks.prep.prepare import prepare

    started = time.perf_counter()
    params = load_params(params_path)
    summary = prepare(params, find_repo_root(Path(params_path)), out)
    get_run_logger().info("prepare: %s (%.1f s)", json.dumps(summary), time.perf_counter() - started)
    return summary


@flow(name="ingest")
def ingest_flow(params_path: str = "params.yaml", out: str = paths.INGEST) -> dict:
    started = time.perf_counter()
    params = load_params(params_path)
    root = find_repo_root(Path(params_path))
    plan = ingest.plan_ingest(params, root)  # a missing path or a broken list stops here, before any work
    cache = stage_cache(params, root, "ingest")
    computed = fill_cache(ingest_chunk_task, plan.items, cache, params.ingest.chunk_size,
                          params.runtime.in_flight_chunks, "ingest",
                          storages=plan.storages, settings=ingest.audio_settings(params))
    summary = ingest.assemble(plan, cache, resolve_local(root, out), params)
    return _log_summary("ingest", summary, started, computed)


@flow(name="text")
def text_flow(params_path: str = "params.yaml", ingest_dir: str = paths.INGEST, out: str = paths.TEXT) -> dict:
    from tasks.prep import text

    started = time.perf_counter()
    params = load_params(params_path)
    root = find_repo_root(Path(params_path))
    items = text.plan_text(ingest.read_index(resolve_local(root, ingest_dir)), params, root)
    cache = stage_cache(params, root, "text")
    computed = fill_cache(text_chunk_task, items, cache, params.text.chunk_size, params.runtime.in_flight_chunks,
                          "text", params=params, root=root)
    summary = text.assemble(items, cache, resolve_local(root, out), params)
    return _log_summary("text", summary, started, computed)


def task_runner_for(params: Params):
    """params.runtime: a thread pool of `workers`, or a Dask cluster (the one at `dask_address`, or a
    local one of `workers` single-threaded processes). Outputs do not depend on the choice."""
    rt = params.runtime
    if rt.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if rt.dask_address:
            return DaskTaskRunner(address=rt.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": rt.workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=rt.workers)


def with_workers(f, params_path: str):
    """The flow with the task runner params.runtime chooses (task_runner_for)."""
    return f.with_options(task_runner=task_runner_for(load_params(params_path)))


@flow(name="bert")
def bert_flow(params_path: str = "params.yaml", text_dir: str = paths.TEXT, out: str = paths.BERT) -> dict:
    from tasks.prep import bert

    started = time.perf_counter()
    params = load_params(params_path)
    root = find_repo_root(Path(params_path))
    device = bert.pick_device(params.features.bert.device)
    items = bert.plan_bert(bert.read_text_rows(resolve_local(root, text_dir)), params, root, device)
    cache = stage_cache(params, root, "bert")
    computed = fill_cache(bert_chunk_task, items, cache, params.features.bert.chunk_size,
                          params.runtime.in_flight_chunks, f"bert ({device})",
                          chunker=partial(bert.chunks, stage=params.features.bert), params=params, root=root, device=device)
    summary = bert.assemble(items, cache, resolve_local(root, out), params, root)
    return _log_summary("bert", summary, started, computed)


@flow(name="spec")
def spec_flow(params_path: str = "params.yaml", ingest_dir: str = paths.INGEST, out: str = paths.SPEC) -> dict:
    from tasks.prep import spec

    started = time.perf_counter()
    params = load_params(params_path)
    root = find_repo_root(Path(params_path))
    ingest_path = resolve_local(root, ingest_dir)
    items = spec.plan_spec(ingest.read_index(ingest_path), params)
    cache, computed = None, 0
    if params.features.spec.cache:
        cache = stage_cache(params, root, "spec")
        rt = params.runtime  # Dask runs tasks in processes already; a thread runner gets spec worker processes
        with (spec.SpecProcesses(rt.workers, cache.path) if rt.task_runner == "thread" and rt.workers > 1
              else nullcontext()) as processes:
            computed = fill_cache(spec_chunk_task, items, cache, params.features.spec.chunk_size,
                                  rt.in_flight_chunks, "spec", ingest_dir=ingest_path,
                                  stft=spec.stft_settings(params), processes=processes)
    summary = spec.assemble(items, cache, resolve_local(root, out), params)
    return _log_summary("spec", summary, started, computed)


@flow(name="stats")
def stats_flow(params_path: str = "params.yaml", ingest_dir: str = paths.INGEST, text_dir: str = paths.TEXT,
               spec_dir: str = paths.SPEC, out: str = paths.REPORTS) -> dict:
    from tasks.prep import stats

    params = load_params(params_path)
    root = find_repo_root(Path(params_path))
    metrics = stats.write_reports(*(resolve_local(root, d) for d in (ingest_dir, text_dir, spec_dir, out)), params)
    get_run_logger().info("stats: %s", json.dumps(metrics, indent=2))
    return metrics


def _side_rejects(*planned) -> list[dict]:
    """The clips a side stage's features refused (tasks.prep.clips.short_clip), each once, from
    (items, cache) pairs: its record lists them, training goes on without them."""
    from tasks.prep.clips import rejected as rejects_in

    found: dict[str, str] = {}
    for items, cache in planned:
        rejected = rejects_in(cache, (i.key for i in items))
        for item in items:
            if item.key in rejected:
                found.setdefault(item.row["id"], rejected[item.key])
    return [{"id": k, "reason": found[k]} for k in sorted(found)]


def _train_side_stage(path: Path, params, root: Path, log, kind: str, nproc: int, train, run_id: str) -> dict:
    """Train `kind` (tasks.training.<kind>) in-process, or under torchrun for nproc > 1, and return
    the base of its run record: run id, the latest checkpoint's URI and step, metrics, lineage."""
    import logging
    import os

    from tasks.core.checkpoints import CheckpointStore
    from tasks.core.storage import storage_from_config
    from tasks.training.launch import is_distributed, launch_torchrun, torchrun_args

    launch = torchrun_args(nproc)
    if is_distributed(launch):
        launch_torchrun(path, launch, root, log, module=f"tasks.training.{kind}")
    else:
        logging.getLogger(f"vitsflow.{kind}").setLevel(logging.INFO)
        train(params, root)
    manifest = CheckpointStore(storage_from_config(params.storage, root), run_id).latest()
    if manifest is None:
        raise RuntimeError(f"{kind} run {run_id}: training finished without a checkpoint")
    uri = os.environ.get("VITSFLOW_STORAGE_URI") or params.storage.uri  # as params.yaml writes it
    return {"enabled": True, "run_id": run_id,
            "checkpoint": {"uri": f"{uri.rstrip('/')}/{manifest['path']}", "step": manifest["step"]},
            "metrics": manifest["metrics"], "lineage": manifest["lineage"]}


@task(name="waveglow-chunk", **RETRIES)
def waveglow_chunk_task(chunk, ingest_dir, settings):
    from tasks.prep import vocoder

    return vocoder.vocoder_chunk(chunk, ingest_dir, settings)


@flow(name="waveglow")
def waveglow_flow(params_path: str = "params.yaml", ingest_dir: str = paths.INGEST,
                  out: str = paths.WAVEGLOW_RECORD) -> dict:
    """The vocoder's features (cached by content), then its training (in-process, or torchrun for
    vocoder.nproc > 1), then the run record `out`; with vocoder.enabled false only a record saying so."""
    from tasks.core.storage import atomic_write_bytes

    started = time.perf_counter()
    log = get_run_logger()
    path = Path(params_path).resolve()
    params = load_params(path)
    root = find_repo_root(path)
    v = params.vocoder
    if not v.enabled:
        record = {"enabled": False, "reason": "params vocoder.enabled is false"}
        atomic_write_bytes(resolve_local(root, out), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        log.info("waveglow: off (params vocoder.enabled is false)")
        return record
    from tasks.prep import vocoder
    from tasks.training import waveglow

    waveglow.check_vocoder(v)  # a config that cannot build a WaveGlow fails before any work
    ingest_path = resolve_local(root, ingest_dir)
    items = vocoder.plan_vocoder(ingest.read_index(ingest_path), params)
    cache = stage_cache(params, root, vocoder.CACHE_NAME)
    with vocoder.one_torch_thread():
        computed = fill_cache(waveglow_chunk_task, items, cache, params.features.spec.chunk_size,
                              params.runtime.in_flight_chunks, "waveglow features", ingest_dir=ingest_path,
                              settings=vocoder.vocoder_settings(params))
    record = _train_side_stage(path, params, root, log, "waveglow", v.nproc, waveglow.train,
                               waveglow.run_id_for(params, root))
    rejects = _side_rejects((items, cache))
    record |= {"sample_rate": v.data_config.sampling_rate, "waveglow_config": v.waveglow_config.model_dump(),
              "clips": len(items) - len(rejects), "rejects": rejects}
    atomic_write_bytes(resolve_local(root, out), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    log.info("waveglow: run %s at step %d, val_loss %s; features of %d clips (%d computed), %d rejects, %.1f s",
             record["run_id"], record["checkpoint"]["step"], record["metrics"].get("val_loss"), len(items), computed,
             len(rejects), time.perf_counter() - started)
    return record


@task(name="asr-chunk", **RETRIES)
def asr_chunk_task(chunk, ingest_dir, settings):
    from tasks.prep import content

    return content.content_chunk(chunk, ingest_dir, settings)


@flow(name="asr")
def asr_flow(params_path: str = "params.yaml", ingest_dir: str = paths.INGEST, out: str = paths.ASR_RECORD) -> dict:
    """The content encoder's features (16 kHz log-mels, cached by content), then its CTC training
    on the text stage's phones (in-process, or torchrun for asr.nproc > 1), then the run record
    `out`; with asr.enabled false only a record saying so."""
    from tasks.core.storage import atomic_write_bytes

    started = time.perf_counter()
    log = get_run_logger()
    path = Path(params_path).resolve()
    params = load_params(path)
    root = find_repo_root(path)
    a = params.asr
    if not a.enabled:
        record = {"enabled": False, "reason": "params asr.enabled is false"}
        atomic_write_bytes(resolve_local(root, out), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        log.info("asr: off (params asr.enabled is false)")
        return record
    from tasks.prep import content, vocoder
    from tasks.training import asr

    ingest_path = resolve_local(root, ingest_dir)
    items = content.plan_content(ingest.read_index(ingest_path), params.audio.sample_rate)
    cache = stage_cache(params, root, content.CACHE_NAME)
    with vocoder.one_torch_thread():
        computed = fill_cache(asr_chunk_task, items, cache, params.features.spec.chunk_size,
                              params.runtime.in_flight_chunks, "asr features", ingest_dir=ingest_path,
                              settings=content.content_settings(params.audio.sample_rate))
    split = asr.clips(root, params, asr.symbol_table(root))  # the clips with phones: what it trains on
    record = _train_side_stage(path, params, root, log, "asr", a.nproc, asr.train, asr.run_id_for(params, split))
    record["clips"] = {name: len(rows) for name, rows in split.items()}
    record["rejects"] = _side_rejects((items, cache))
    atomic_write_bytes(resolve_local(root, out), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    log.info("asr: run %s at step %d, val PER %s; features of %d clips (%d computed), %d rejects, %.1f s",
             record["run_id"], record["checkpoint"]["step"], record["metrics"].get("per"), len(items), computed,
             len(record["rejects"]), time.perf_counter() - started)
    return record


@task(name="vc-chunk", **RETRIES)
def vc_chunk_task(chunk, ingest_dir, settings):
    from tasks.prep import content

    return content.vc_chunk(chunk, ingest_dir, settings)


@flow(name="vc")
def vc_flow(params_path: str = "params.yaml", ingest_dir: str = paths.INGEST, out: str = paths.VC_RECORD) -> dict:
    """HiFi-VC's features (the content mels the asr stage caches too, and per clip lf0 and 24 kHz
    audio), then its training with the asr stage's encoder frozen, then the run record `out`; with
    vc.enabled false only a record saying so."""
    from tasks.core.storage import atomic_write_bytes

    started = time.perf_counter()
    log = get_run_logger()
    path = Path(params_path).resolve()
    params = load_params(path)
    root = find_repo_root(path)
    if not params.vc.enabled:
        record = {"enabled": False, "reason": "params vc.enabled is false"}
        atomic_write_bytes(resolve_local(root, out), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        log.info("vc: off (params vc.enabled is false)")
        return record
    from tasks.prep import content, vocoder
    from tasks.training import vc

    _, _, encoder = vc.asr_checkpoint(root, params)  # no encoder: fail before any work
    ingest_path = resolve_local(root, ingest_dir)
    rows = ingest.read_index(ingest_path)
    computed, planned = 0, []
    with vocoder.one_torch_thread():
        for task_fn, items, name, settings in [
                (asr_chunk_task, content.plan_content(rows, params.audio.sample_rate), content.CACHE_NAME,
                 content.content_settings(params.audio.sample_rate)),
                (vc_chunk_task, content.plan_vc(rows, params.audio.sample_rate), content.VC_CACHE_NAME,
                 content.vc_settings(params.audio.sample_rate))]:
            planned.append((items, stage_cache(params, root, name)))
            computed += fill_cache(task_fn, items, planned[-1][1], params.features.spec.chunk_size,
                                   params.runtime.in_flight_chunks, f"{name} features", ingest_dir=ingest_path,
                                   settings=settings)
    record = _train_side_stage(path, params, root, log, "vc", params.vc.nproc, vc.train,
                               vc.run_id_for(params, vc.clips(root, params), encoder))
    rejects = _side_rejects(*planned)
    record |= {"encoder": encoder, "clips": len(rows) - len(rejects), "rejects": rejects}
    atomic_write_bytes(resolve_local(root, out), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    log.info("vc: run %s at step %d, val mel L1 %s; features of %d clips (%d computed), %d rejects, %.1f s",
             record["run_id"], record["checkpoint"]["step"], record["metrics"].get("val_loss"), len(rows), computed,
             len(rejects), time.perf_counter() - started)
    return record

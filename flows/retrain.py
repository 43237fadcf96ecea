"""The `retrain` flow: what the scheduled `retrain` deployment does, one step per Prefect task.

1. pick up new data: each dataset's files (local folder, or s3:// prefix listed through boto3)
   against the fingerprint DVC last recorded; a changed dataset's `source@N` stage is forced, so
   a corpus DVC cannot watch (S3) still triggers `ingest`;
2. `dvc repro` of the preprocessing half (the data stages and stats), holding the workspace lock
   (tasks/orchestration/workspace.py) for the whole run: one pipeline per workspace;
3. `dvc push`: the data version a GPU machine will pull;
4. training, under the global concurrency limit `gpu`: `local` runs the `train` stage here (torchrun
   when train.nproc > 1); `work_pool` submits the `train` deployment to params.retrain.work_pool
   with this params.yaml and dvc.lock, waits for it, then `dvc repro train` here only records the
   finished run (checkpoints are on storage). A crashed or preempted training resumes from its last
   checkpoint on storage when retried;
5-6. `dvc repro` of the rest: the `evaluate` stage, with the promotion gate;
7. `dvc push` again and a summary artifact: metrics against production, promoted or not and why,
   links to the checkpoint, the samples and the training flow run.

Transient failures (S3, the DVC remote, a lost worker) are retried with exponential backoff.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks.core import paths
from tasks.core.config import Params, find_repo_root, load_params, resolve_local

PREPROCESS_TARGETS = ["bert", "spec", "stats"]  # everything upstream of `train` (and stats)
TRANSIENT = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5), retry_jitter_factor=0.5,
                 cache_policy=NO_CACHE)
GPU_LIMIT = "gpu"


@task(name="pick-up-new-data", **TRANSIENT)
def pick_up_new_data(params: Params, root: Path) -> dict[str, dict]:
    from tasks.orchestration.workspace import dataset_changes

    changes = dataset_changes(params, root)
    for name, c in changes.items():
        if c["missing"]:
            get_run_logger().info("%s: not there yet (a stage makes it, or `dvc repro` will say why)", name)
            continue
        get_run_logger().info("%s: %d files, %d added, %d removed, %d changed%s", name, c["files"], len(c["added"]),
                              len(c["removed"]), len(c["changed"]), "" if c["recorded"] else " (first run)")
    return changes


@task(name="dvc-repro", retries=1, retry_delay_seconds=30, cache_policy=NO_CACHE)
def dvc_repro(root: Path, targets: list[str], force: list[str]) -> list[str]:
    """`dvc repro` (stage results are cached by content, so a retry redoes only what failed)."""
    from tasks.orchestration.workspace import dvc, stages_run

    log = get_run_logger()
    for stage in force:  # a dataset DVC cannot watch (s3://) changed: refingerprint it
        dvc(root, "repro", "--force", "--single-item", stage, log=log)
    ran = stages_run(dvc(root, "repro", *targets, log=log))
    log.info("stages run: %s", ", ".join(ran) or "none (up to date)")
    return ran


@task(name="dvc-push", **TRANSIENT)
def dvc_push(root: Path) -> None:
    from tasks.orchestration.workspace import dvc

    dvc(root, "push", log=get_run_logger())


@task(name="train-local", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10), cache_policy=NO_CACHE)
def train_local(root: Path) -> dict:
    """The `train` stage in this workspace; a retry resumes from the run's last checkpoint."""
    from prefect.concurrency.sync import concurrency

    with concurrency(GPU_LIMIT, occupy=1):
        dvc_repro.fn(root, ["train"], [])
    return {"where": "local", "flow_run": None}


@task(name="train-on-work-pool", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10),
      cache_policy=NO_CACHE)
def train_on_work_pool(params: Params, root: Path) -> dict:
    """Submit the `train` deployment with this workspace's params.yaml and dvc.lock and wait for it.
    Its flow pulls that data version from the DVC remote, so it runs on a machine without this
    workspace; a retry is a new flow run that resumes from the run's last checkpoint on storage."""
    from prefect.concurrency.sync import concurrency
    from prefect.deployments import run_deployment

    log = get_run_logger()
    name = f"train/{params.retrain.train_deployment}"
    parameters = {"params_yaml": (root / "params.yaml").read_text(encoding="utf-8"),
                  "dvc_lock": (root / "dvc.lock").read_text(encoding="utf-8")}
    with concurrency(GPU_LIMIT, occupy=1):
        log.info("submitting %s to work pool %s", name, params.retrain.work_pool)
        run = run_deployment(name, parameters=parameters, timeout=params.retrain.train_timeout_s, as_subflow=True)
    state = run.state
    if state is None or not state.is_completed():
        raise RuntimeError(f"{name} flow run {run.name} ({run.id}) ended {state.name if state else 'without a state'}"
                           f": {state.message if state else ''}")
    log.info("%s flow run %s completed", name, run.name)
    dvc_repro.fn(root, ["train"], [])  # records the finished run (train/run.json); no training left
    return {"where": f"work pool {params.retrain.work_pool}", "flow_run": str(run.id), "flow_run_name": run.name}


def _ui_url(path: str) -> Optional[str]:
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/{path}" if base else None


def summary_markdown(changes: dict, ran: list[str], training: dict, run_record: dict, metrics: dict,
                     promotion: dict, production_before: Optional[dict], samples: list[str]) -> str:
    """The run at a glance: data, stages, training, metrics against production, the decision."""
    from tasks.evaluation.evaluate import HEADLINE

    def fmt(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}"

    new = {n: c for n, c in changes.items() if c["added"] or c["removed"] or c["changed"]}
    lines = ["# retrain", "",
             "**Data**: " + ("; ".join(f"`{n}` +{len(c['added'])} −{len(c['removed'])} ~{len(c['changed'])}"
                                       for n, c in new.items()) or "no new data") + "  ",
             "**Stages run**: " + (", ".join(ran) or "none (up to date)") + "  "]
    run_link = training.get("flow_run") and _ui_url(f"runs/flow-run/{training['flow_run']}")
    lines.append(f"**Training**: {training['where']}" + (f" ([flow run]({run_link}))" if run_link else "") + "  ")
    ckpt = run_record["checkpoint"]
    lines += [f"**Checkpoint**: [{ckpt['uri']}]({ckpt['uri']}) (run `{run_record['run_id']}`, step {ckpt['step']})",
              "", "| metric | candidate | production before | change |", "|---|---|---|---|"]
    # production's scores on the candidate's utterances when the gate had to score it again
    # (eval/production.json), else the ones its pointer recorded; promotion["compared"] says which
    before = (production_before or {}).get("metrics") or {}
    if promotion.get("compared"):
        lines[-2] = f"| metric | candidate | production before ({promotion['compared']}) | change |"
    for k in HEADLINE + list(metrics.get("judges", {})):
        c, p = metrics.get(k), before.get(k)
        lines.append(f"| {k} | {fmt(c)} | {fmt(p)} | {fmt(c - p) if c is not None and p is not None else '–'} |")
    verdict = "**promoted to production**" if promotion.get("promoted") else "**not promoted**"
    lines += ["", f"{verdict}: {promotion.get('reason')}", ""]
    if samples:
        lines += ["**Samples** (eval/samples, pushed to the DVC remote): " + ", ".join(f"`{s}`" for s in samples)]
    return "\n".join(lines) + "\n"


@flow(name="retrain")
def retrain_flow(params_path: str = "params.yaml") -> dict:
    from prefect.artifacts import create_markdown_artifact

    from tasks.evaluation.evaluate import read_production
    from tasks.orchestration.workspace import source_stage, workspace_lock

    started = time.perf_counter()
    log = get_run_logger()
    path = Path(params_path).resolve()
    root = find_repo_root(path)
    with workspace_lock(root, holder=f"retrain flow (pid {os.getpid()})"):
        params = load_params(path)
        cfg = params.retrain
        production_before = read_production(params, root)
        if cfg.push:
            from tasks.orchestration.remote import configure_dvc_remote

            log.info("DVC remote: %s", configure_dvc_remote(params, root))
        changes = pick_up_new_data(params, root)
        force = [source_stage(params, n) for n, c in changes.items()
                 if c["recorded"] and (c["added"] or c["removed"] or c["changed"])]
        ran = dvc_repro(root, PREPROCESS_TARGETS, force)
        if cfg.push:
            dvc_push(root)
        training = train_local(root) if cfg.training == "local" else train_on_work_pool(params, root)
        ran += dvc_repro(root, [], [])  # evaluate (and the promotion gate), plus anything left
        if cfg.push:
            dvc_push(root)
        run_record = json.loads(resolve_local(root, paths.RUN_RECORD).read_text(encoding="utf-8"))
        metrics = json.loads(resolve_local(root, "eval/metrics.json").read_text(encoding="utf-8"))
        promotion = json.loads(resolve_local(root, "eval/promotion.json").read_text(encoding="utf-8"))
        rescored = resolve_local(root, "eval/production.json")
        if production_before is not None and rescored.is_file():
            scores = json.loads(rescored.read_text(encoding="utf-8"))
            production_before = {**production_before, "metrics": scores} if scores else production_before
        samples = sorted(p.name for p in resolve_local(root, "eval/samples").glob("*.wav"))
    markdown = summary_markdown(changes, ran, training, run_record, metrics, promotion, production_before, samples)
    create_markdown_artifact(markdown=markdown, key="retrain-summary",
                             description=f"retrain: {'promoted' if promotion.get('promoted') else 'not promoted'}")
    log.info("retrain finished in %.1f s\n%s", time.perf_counter() - started, markdown)
    return {"stages_run": ran, "training": training, "checkpoint": run_record["checkpoint"],
            "promotion": promotion, "metrics": {k: metrics.get(k) for k in ("mcd_db", "f0_rmse_cents", "utterances")}}

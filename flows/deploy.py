"""The Prefect side of the pipeline: the `gpu` concurrency limit, the `train` deployment on a work
pool, and the scheduled `retrain` deployment (`vitsflow deploy`, `vitsflow serve`).

    retrain            cron + timezone from params.yaml `schedule:`; run by `vitsflow serve` (a
                       runner in this workspace: it needs the workspace's git and DVC state)
    train/<name>       on params.retrain.work_pool; `retrain` submits it when retrain.training is
                       work_pool. A process pool is created if missing; a GPU cluster's pool comes
                       from infra/k8s/gpu-work-pool.json (infra/README.md)
    gpu (limit)        params.retrain.gpu_slots trainings at once, across all deployments

Everything is idempotent: deploying again updates the schedule, parameters and limit in place.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Optional

from flows.retrain import GPU_LIMIT
from tasks.core.config import Params, find_repo_root, load_params


def _sync(coro):
    from prefect.utilities.asyncutils import run_coro_as_sync

    return run_coro_as_sync(coro)


class DeployError(RuntimeError):
    """The deployments cannot be registered as asked (the message says what to do)."""


async def _ensure_limit_and_pool(slots: int, pool: str, image: Optional[str]) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    async with get_client() as client:
        await client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, slots)
        try:
            work_pool = await client.read_work_pool(pool)
            created = False
        except ObjectNotFound:
            work_pool = await client.create_work_pool(WorkPoolCreate(
                name=pool, type="process", description="vitsflow training (created by `vitsflow deploy`)",
                base_job_template=ProcessWorker.get_default_base_job_template()))
            created = True
    variables = (work_pool.base_job_template or {}).get("variables", {}).get("properties", {})
    if image and "image" not in variables:
        raise DeployError(f"--image {image}: work pool {pool!r} ({work_pool.type}) runs no images; create the GPU "
                          "pool from infra/k8s/gpu-work-pool.json first (infra/README.md), or deploy without --image")
    return {"limit": {"name": GPU_LIMIT, "slots": slots}, "work_pool": {"name": pool, "type": work_pool.type,
                                                                         "created": created}}


def _train_deployment(params: Params, root: Path, image: Optional[str]) -> str:
    """`train/<name>` on the work pool. With an image (infra/Dockerfile), the job runs the project
    baked into it; without, the worker runs this checkout's code (a process worker here or on a
    machine sharing the path)."""
    from flows.train import train_flow

    cfg = params.retrain
    common = dict(name=cfg.train_deployment, work_pool_name=cfg.work_pool, print_next_steps=False,
                  description="Bert-VITS2 training of the data version in dvc.lock (pulled from the DVC remote)",
                  tags=["vitsflow", "gpu"])
    if image:  # the entrypoint is relative to the project folder, the image's working folder
        with contextlib.chdir(Path(__file__).resolve().parents[1]):
            return str(train_flow.deploy(image=image, build=False, push=False, **common))
    return str(train_flow.from_source(source=str(root), entrypoint="flows/train.py:train_flow").deploy(**common))


def retrain_deployment(params: Params, params_path: Path):
    """The scheduled `retrain` deployment (a RunnerDeployment: `.apply()` registers, `serve` runs)."""
    from prefect.schedules import Cron

    from flows.retrain import retrain_flow

    sched = params.schedule
    return retrain_flow.to_deployment(
        # one run at a time: a run due while another is running waits its turn (the workspace lock
        # still guards against a `vitsflow retrain` started by hand)
        name="retrain", schedules=[Cron(sched.cron, timezone=sched.timezone)], concurrency_limit=1,
        parameters={"params_path": str(params_path)}, tags=["vitsflow"],
        description=f"dvc repro → dvc push → train ({params.retrain.training}) → evaluate → promote; "
                    f"cron `{sched.cron}` ({sched.timezone}) from params.yaml `schedule:`")


def deploy(params_path: str = "params.yaml", image: Optional[str] = None) -> dict[str, Any]:
    """Register the limit, the work pool (if missing), `train` and `retrain`; returns what it did."""
    path = Path(params_path).resolve()
    params = load_params(path)
    root = find_repo_root(path)
    out = _sync(_ensure_limit_and_pool(params.retrain.gpu_slots, params.retrain.work_pool, image))
    out["train"] = {"name": f"train/{params.retrain.train_deployment}", "id": _train_deployment(params, root, image)}
    with contextlib.chdir(root):  # the runner (`serve`) resolves the entrypoint from the workspace
        retrain_id = retrain_deployment(params, path).apply()
    out["retrain"] = {"name": "retrain/retrain", "id": str(retrain_id), "cron": params.schedule.cron,
                      "timezone": params.schedule.timezone}
    return out


def serve(params_path: str = "params.yaml") -> None:
    """Deploy, then run `retrain`'s scheduled (and "run now") flow runs from this workspace until
    interrupted."""
    from prefect import serve as prefect_serve

    path = Path(params_path).resolve()
    deploy(str(path))
    root = find_repo_root(path)
    os.chdir(root)  # the runner starts flow runs from the entrypoint, relative to the project
    prefect_serve(retrain_deployment(load_params(path), path), print_starting_message=True)


__all__ = ["DeployError", "GPU_LIMIT", "deploy", "retrain_deployment", "serve"]

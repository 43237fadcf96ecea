"""Stage `train` as a Prefect flow: run the trainer (tasks/training/train.py) in this process, or under
torchrun with params.train.nproc processes, then write `train/run.json` (the run id, the
latest checkpoint's URI and step, its metrics and lineage) atomically. Checkpoints themselves live
on params.storage under runs/<run_id>/, outside DVC; running the stage again resumes the run.

Several machines: with TORCHRUN_ARGS naming a rendezvous (`--nnodes=2 --rdzv_backend=c10d
--rdzv_endpoint=HOST:PORT --rdzv_id=ID`), the flow's torchrun is one node of the job and
`vitsflow train-node` on each other machine joins it (infra/k8s: an indexed Job whose pod 0 runs
the flow run and the others `train-node`)."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger

from tasks.core import paths
from tasks.core.config import find_repo_root, load_params, resolve_local
from tasks.orchestration.workspace import check_out_data_version
from tasks.training.launch import is_distributed, launch_torchrun, torchrun_args


def _workspace() -> Path:
    return Path(os.environ.get("VITSFLOW_WORKSPACE") or os.getcwd()).resolve()


@flow(name="train")
def train_flow(params_path: str = "params.yaml", out: str = paths.RUN_RECORD, params_yaml: Optional[str] = None,
               dvc_lock: Optional[str] = None) -> dict:
    """`params_yaml` and `dvc_lock` (texts): the work-pool case (flows/retrain.py); the flow runs in
    the checkout at $VITSFLOW_WORKSPACE (else the working folder), adopts them and pulls the data."""
    from tasks.core.checkpoints import CheckpointStore
    from tasks.core.storage import atomic_write_bytes, storage_from_config
    from tasks.training.train import run_id_for, train

    started = time.perf_counter()
    log = get_run_logger()
    if params_yaml is not None or dvc_lock is not None:
        if params_yaml is None or dvc_lock is None:
            raise ValueError("params_yaml and dvc_lock go together: the params and the data version they trained on")
        params_path = str(check_out_data_version(_workspace(), params_yaml, dvc_lock, log))
    path = Path(params_path).resolve()
    params = load_params(path)
    root = find_repo_root(path)
    run_id = run_id_for(params, root)
    launch = torchrun_args(params.train.nproc)
    distributed = is_distributed(launch)
    log.info("run %s: %s, %s, storage %s", run_id, params.model.variant,
             f"torchrun {' '.join(launch)}" if distributed else "in this process",
             os.environ.get("VITSFLOW_STORAGE_URI") or params.storage.uri)
    if distributed:
        launch_torchrun(path, launch, root, log)
    else:
        # the loop's progress lines go out through Prefect's console handler, next to the flow's
        logging.getLogger("vitsflow.train").setLevel(logging.INFO)
        train(params, root)

    storage = storage_from_config(params.storage, root)  # VITSFLOW_STORAGE_URI overrides storage.uri
    store = CheckpointStore(storage, run_id)
    manifest = store.latest()
    if manifest is None:
        raise RuntimeError(f"run {run_id}: training finished without a checkpoint in {storage.uri}/runs/{run_id}")
    from tasks.training.corpus import Corpus
    from tasks.core.paths import DATA_DIRS

    speakers = Corpus.open(**{k: resolve_local(root, v) for k, v in DATA_DIRS.items()}).speakers
    # The URI as params.yaml writes it (file://storage stays relative), so clones agree byte for byte.
    uri = os.environ.get("VITSFLOW_STORAGE_URI") or params.storage.uri
    summary = {"run_id": run_id, "variant": params.model.variant,
               "checkpoint": {"uri": f"{uri.rstrip('/')}/{manifest['path']}", "step": manifest["step"]},
               "metrics": manifest["metrics"], "lineage": manifest["lineage"],
               "speakers": speakers}  # the speaker ids of the checkpoint: index in this list
    atomic_write_bytes(resolve_local(root, out), (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    log.info("train: run %s at step %d, val_loss %s, %.1f s\n%s", run_id, manifest["step"],
             manifest["metrics"].get("val_loss"), time.perf_counter() - started, json.dumps(summary, indent=2))
    return summary


def train_node(params_path: Optional[str] = None, flow_run_id: Optional[str] = None) -> None:
    """Join a multi-node training job as one of its other nodes: `torchrun TORCHRUN_ARGS` on the
    data version of the `train` flow run `flow_run_id` (its params.yaml and dvc.lock, pulled into
    $VITSFLOW_WORKSPACE), or on the checkout of `params_path`. Writes no run record: the flow does."""
    log = logging.getLogger("vitsflow.train_node")
    log.setLevel(logging.INFO)  # Prefect's logging setup leaves the root logger at WARNING
    if flow_run_id:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            parameters = client.read_flow_run(flow_run_id).parameters
        if parameters.get("params_yaml") is None:
            raise ValueError(f"flow run {flow_run_id} carries no params_yaml/dvc_lock: it trains on its own checkout")
        path = check_out_data_version(_workspace(), parameters["params_yaml"], parameters["dvc_lock"], log)
    else:
        path = Path(params_path or "params.yaml").resolve()
    params = load_params(path)
    launch = torchrun_args(params.train.nproc)
    if "--standalone" in launch:
        raise ValueError("train-node joins a multi-node job: set TORCHRUN_ARGS with --nnodes > 1 and --rdzv_endpoint")
    launch_torchrun(path, launch, find_repo_root(path), log)

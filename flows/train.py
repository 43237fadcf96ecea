"""Stage `train` as a Prefect flow: run the trainer (tasks/train.py) in this process, or under
torchrun with params.train.nproc processes, then write `train/manifest.json` (the run id, the
latest checkpoint's URI and step, its metrics and lineage) atomically. Checkpoints themselves live
on params.storage under runs/<run_id>/, outside DVC; running the stage again resumes the run."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger

from tasks.config import find_repo_root, load_params, resolve_local


def _launch_torchrun(params_path: Path, nproc: int, root: Path) -> None:
    """`torchrun --standalone --nproc_per_node N -m tasks.train` with this interpreter and this code."""
    import tasks

    code_root = str(Path(tasks.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [code_root, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tasks.train", "--params", str(params_path)]
    get_run_logger().info("launching %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=root, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with status {proc.returncode} (its output is above)")


def _check_out_data_version(workspace: Path, params_yaml: str, dvc_lock: str) -> Path:
    """On a training machine: write the submitter's params.yaml and dvc.lock into `workspace` (a
    checkout of this project) and pull the data stages' outs of that version from the DVC remote."""
    from tasks.remote import configure_dvc_remote
    from tasks.storage import atomic_write_bytes
    from tasks.workspace import DATA_STAGES, dvc

    log = get_run_logger()
    atomic_write_bytes(workspace / "params.yaml", params_yaml.encode("utf-8"))
    atomic_write_bytes(workspace / "dvc.lock", dvc_lock.encode("utf-8"))
    params = load_params(workspace / "params.yaml")
    log.info("DVC remote: %s", configure_dvc_remote(params, workspace))
    dvc(workspace, "pull", *DATA_STAGES, log=log)
    return workspace / "params.yaml"


@flow(name="train")
def train_flow(params_path: str = "params.yaml", out: str = "train/manifest.json", params_yaml: Optional[str] = None,
               dvc_lock: Optional[str] = None) -> dict:
    """`params_yaml` and `dvc_lock` (texts): the work-pool case (flows/retrain.py); the flow runs in
    the checkout at $VITSFLOW_WORKSPACE (else the working folder), adopts them and pulls the data."""
    from tasks.checkpoints import CheckpointStore
    from tasks.storage import atomic_write_bytes, storage_from_config
    from tasks.train import run_id_for, train

    started = time.perf_counter()
    log = get_run_logger()
    if params_yaml is not None or dvc_lock is not None:
        if params_yaml is None or dvc_lock is None:
            raise ValueError("params_yaml and dvc_lock go together: the params and the data version they trained on")
        workspace = Path(os.environ.get("VITSFLOW_WORKSPACE") or os.getcwd()).resolve()
        params_path = str(_check_out_data_version(workspace, params_yaml, dvc_lock))
    path = Path(params_path).resolve()
    params = load_params(path)
    root = find_repo_root(path)
    run_id = run_id_for(params, root)
    log.info("run %s: %s, %d process(es), storage %s", run_id, params.model.variant, params.train.nproc,
             os.environ.get("VITSFLOW_STORAGE_URI") or params.storage.uri)
    if params.train.nproc > 1:
        _launch_torchrun(path, params.train.nproc, root)
    else:
        # the loop's progress lines go out through Prefect's console handler, next to the flow's
        logging.getLogger("vitsflow.train").setLevel(logging.INFO)
        train(params, root)

    storage = storage_from_config(params.storage, root)  # VITSFLOW_STORAGE_URI overrides storage.uri
    store = CheckpointStore(storage, run_id)
    manifest = store.latest()
    if manifest is None:
        raise RuntimeError(f"run {run_id}: training finished without a checkpoint in {storage.uri}/runs/{run_id}")
    from tasks.data import Corpus
    from tasks.train import DATA_DIRS

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

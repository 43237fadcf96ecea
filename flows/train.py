"""Stage `train` as a Prefect flow: run the trainer (tasks/train.py) in this process, or under
torchrun with params.train.nproc processes, then write `train/manifest.json` (the run id, the
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
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Optional

from prefect import flow, get_run_logger

from tasks.config import find_repo_root, load_params, resolve_local


_ENV_REF = re.compile(r"\$\((\w+)\)|\$\{(\w+)\}|\$(\w+)")


def _expand(text: str, env: Mapping[str, str]) -> str:
    """$(NAME), ${NAME} and $NAME from `env`. Kubernetes expands $(NAME) only for variables listed
    before, and Prefect's worker puts the job's env first, so the references arrive unexpanded."""
    def value(m: re.Match) -> str:
        name = next(g for g in m.groups() if g)
        if name not in env:
            raise ValueError(f"TORCHRUN_ARGS refers to ${name}, which is not set")
        return env[name]

    return _ENV_REF.sub(value, text)


def _flag(args: list[str], name: str) -> Optional[str]:
    """The value of torchrun option `name` (`--a_b` or `--a-b`, `=value` or a separate word)."""
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if key.startswith("--") and key[2:].replace("-", "_") == name[2:]:
            return value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return None


def torchrun_args(nproc: int, environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """torchrun's launch arguments: TORCHRUN_ARGS (a multi-node rendezvous) when it names more than
    one node, else `--standalone` on this machine. `--nproc_per_node` defaults to train.nproc."""
    env = dict(os.environ if environ is None else environ)
    if "JOB_COMPLETION_INDEX" in env and "JOB_NAME" not in env and "HOSTNAME" in env:
        env["JOB_NAME"] = env["HOSTNAME"].rsplit("-", 1)[0]  # an indexed Job's pod is <job name>-<index>
    args = shlex.split(env.get("TORCHRUN_ARGS", ""))
    nodes = _flag(args, "--nnodes")
    if not args or nodes in (None, "1", "1:1"):  # one machine: no rendezvous service needed
        return ["--standalone", f"--nproc_per_node={_flag(args, '--nproc_per_node') or nproc}"]
    args = [_expand(arg, env) for arg in args]
    if _flag(args, "--rdzv_endpoint") is None:
        raise ValueError(f"TORCHRUN_ARGS asks for {nodes} nodes but names no --rdzv_endpoint: {args}")
    return args if _flag(args, "--nproc_per_node") else [*args, f"--nproc_per_node={nproc}"]


def _launch_torchrun(params_path: Path, args: list[str], root: Path,
                     log: logging.Logger | logging.LoggerAdapter) -> None:
    """`torchrun ARGS -m tasks.train` with this interpreter and this code."""
    import tasks

    code_root = str(Path(tasks.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [code_root, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", *args, "-m", "tasks.train", "--params", str(params_path)]
    log.info("launching %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=root, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with status {proc.returncode} (its output is above)")


def _check_out_data_version(workspace: Path, params_yaml: str, dvc_lock: str,
                            log: logging.Logger | logging.LoggerAdapter) -> Path:
    """On a training machine: write the submitter's params.yaml and dvc.lock into `workspace` (a
    checkout of this project) and pull the data stages' outs of that version from the DVC remote."""
    from tasks.remote import configure_dvc_remote
    from tasks.storage import atomic_write_bytes
    from tasks.workspace import DATA_STAGES, dvc

    atomic_write_bytes(workspace / "params.yaml", params_yaml.encode("utf-8"))
    atomic_write_bytes(workspace / "dvc.lock", dvc_lock.encode("utf-8"))
    params = load_params(workspace / "params.yaml")
    log.info("DVC remote: %s", configure_dvc_remote(params, workspace))
    dvc(workspace, "pull", *DATA_STAGES, log=log)
    return workspace / "params.yaml"


def _workspace() -> Path:
    return Path(os.environ.get("VITSFLOW_WORKSPACE") or os.getcwd()).resolve()


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
        params_path = str(_check_out_data_version(_workspace(), params_yaml, dvc_lock, log))
    path = Path(params_path).resolve()
    params = load_params(path)
    root = find_repo_root(path)
    run_id = run_id_for(params, root)
    launch = torchrun_args(params.train.nproc)
    distributed = "--standalone" not in launch or _flag(launch, "--nproc_per_node") != "1"
    log.info("run %s: %s, %s, storage %s", run_id, params.model.variant,
             f"torchrun {' '.join(launch)}" if distributed else "in this process",
             os.environ.get("VITSFLOW_STORAGE_URI") or params.storage.uri)
    if distributed:
        _launch_torchrun(path, launch, root, log)
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


def train_node(params_path: Optional[str] = None, flow_run_id: Optional[str] = None) -> None:
    """Join a multi-node training job as one of its other nodes: `torchrun TORCHRUN_ARGS` on the
    data version of the `train` flow run `flow_run_id` (its params.yaml and dvc.lock, pulled into
    $VITSFLOW_WORKSPACE), or on the checkout of `params_path`. Writes no manifest: the flow does."""
    log = logging.getLogger("vitsflow.train_node")
    log.setLevel(logging.INFO)  # Prefect's logging setup leaves the root logger at WARNING
    if flow_run_id:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            parameters = client.read_flow_run(flow_run_id).parameters
        if parameters.get("params_yaml") is None:
            raise ValueError(f"flow run {flow_run_id} carries no params_yaml/dvc_lock: it trains on its own checkout")
        path = _check_out_data_version(_workspace(), parameters["params_yaml"], parameters["dvc_lock"], log)
    else:
        path = Path(params_path or "params.yaml").resolve()
    params = load_params(path)
    launch = torchrun_args(params.train.nproc)
    if "--standalone" in launch:
        raise ValueError("train-node joins a multi-node job: set TORCHRUN_ARGS with --nnodes > 1 and --rdzv_endpoint")
    _launch_torchrun(path, launch, find_repo_root(path), log)

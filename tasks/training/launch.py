"""Launching the trainer under torchrun: its arguments (one machine, or a multi-node rendezvous from
TORCHRUN_ARGS with Kubernetes-style variable references) and the launch itself."""
from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional

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


def is_distributed(args: list[str]) -> bool:
    """Whether `torchrun_args` asks for more than one process (else the trainer runs in-process)."""
    return "--standalone" not in args or _flag(args, "--nproc_per_node") != "1"


def launch_torchrun(params_path: Path, args: list[str], root: Path,
                     log: logging.Logger | logging.LoggerAdapter, module: str = "tasks.training.train") -> None:
    """`torchrun ARGS -m <module>` (a trainer: tasks.training.train or .waveglow) with this interpreter and this code."""
    import tasks

    code_root = str(Path(tasks.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [code_root, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", *args, "-m", module, "--params", str(params_path)]
    log.info("launching %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=root, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with status {proc.returncode} (its output is above)")


def trainer_main(description: str, train, argv: Optional[list[str]] = None) -> None:
    """The `python -m tasks.training.<loop>` entry point both loops share (one process, or one
    torchrun rank): `train(params, root)` on --params, rank 0 logging at INFO and printing the
    result as one JSON line."""
    import argparse
    import json

    from tasks.core.config import find_repo_root, load_params

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s %(levelname)s: %(message)s")
    params_path = Path(args.params)
    result = train(load_params(params_path), find_repo_root(params_path))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({"run_id": result.run_id, "step": result.step, "val_loss": result.val_loss}))


def setup_distributed(device_setting: str):
    """(rank, world, local_rank, device) of this process for the clip trainers (WaveGlow, ASR):
    `device_setting` auto/cpu/cuda; under torchrun (WORLD_SIZE > 1) the process group, nccl on
    CUDA, gloo on the CPU with the cores shared between the machine's processes."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_setting == "cuda" or (device_setting == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        if not use_cuda:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return (dist.get_rank() if world > 1 else 0), world, local_rank, device

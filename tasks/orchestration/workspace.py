"""The DVC workspace that `retrain` drives: one run at a time, `dvc` as a subprocess, new data.

    with workspace_lock(root):            # a second retrain in this workspace fails at once
        changed = new_data(params, root)  # datasets whose files differ from data/sources/<name>.json
        dvc(root, "repro", "bert", "spec", "stats")

The lock is an advisory `flock` on `.dvc/tmp/vitsflow-workspace.lock`: the kernel releases it when
the holder dies, so a crashed or SIGKILLed run never leaves the workspace locked. DVC's own lock
only covers one command; this one covers a whole repro → push → train → evaluate sequence.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

from tasks.core import paths
from tasks.core.config import Params, resolve_local
from tasks.core.tools import env_with_bin_dir, executable

logger = logging.getLogger("vitsflow.workspace")

LOCK_FILE = ".dvc/tmp/vitsflow-workspace.lock"
# what the data stages hand to `train` (the DVC stages a GPU machine pulls before training)
DATA_STAGES = ["ingest", "text", "bert", "spec"]


class WorkspaceBusy(RuntimeError):
    """Another process holds the workspace lock."""


class DvcError(RuntimeError):
    """A `dvc` command failed; the message carries the command and the end of its output."""


@contextlib.contextmanager
def workspace_lock(root: Path, holder: str = "retrain") -> Iterator[Path]:
    """Hold the workspace's exclusive lock for the block, or raise WorkspaceBusy naming the holder."""
    path = Path(root) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            raise WorkspaceBusy(f"{root}: another run holds the workspace lock {path} ({other}); "
                                "one pipeline run per workspace at a time") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"holder": holder, "pid": os.getpid(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def dvc(root: Path, *args: str, env: Optional[dict] = None, log: Optional[logging.Logger] = None) -> str:
    """Run `dvc ARGS` in `root`, streaming its output lines to `log`; return the output. The
    environment is inherited (PREFECT_API_URL: each stage's flow run reports to the same server)."""
    log = log or logger
    full_env = env_with_bin_dir(dict(os.environ, **(env or {})))  # its stage commands: `vitsflow`
    cmd = [executable("dvc"), *args]
    log.info("$ %s", " ".join(["dvc", *args]))
    proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        log.info("dvc | %s", line.rstrip())
    if proc.wait() != 0:
        raise DvcError(f"`dvc {' '.join(args)}` in {root} exited with status {proc.returncode}:\n"
                       + "".join(lines[-40:]))
    return "".join(lines)


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` output says it ran."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def dataset_changes(params: Params, root: Path) -> dict[str, dict]:
    """Per dataset: its files now (local folder, or an s3:// prefix listed through boto3) against
    the fingerprint DVC last recorded in data/sources/<name>.json. Returns {name: {"files", "added",
    "removed", "changed", "recorded", "missing"}}; `recorded` is False before the first `dvc repro`;
    `missing`: a local folder that is not there (yet: the demo corpus is made by a stage)."""
    from tasks.core.cache import FileHashes
    from tasks.prep.datasets import DatasetError, file_identity, fingerprint_dataset

    out = {}
    memo = FileHashes.in_dir(resolve_local(root, params.runtime.cache_dir))
    for ds in params.datasets:
        try:
            now = {f["path"]: file_identity(f) for f in fingerprint_dataset(ds, root, memo)["files"]}
        except DatasetError:
            if ds.path.startswith("s3://"):
                raise
            now = None  # a local folder a stage makes (the demo corpus), or not there yet: dvc repro says
        recorded_path = resolve_local(root, f"{paths.SOURCES}/{ds.name}.json")
        recorded = json.loads(recorded_path.read_text(encoding="utf-8"))["files"] if recorded_path.is_file() else []
        before = {f["path"]: file_identity(f) for f in recorded}
        if now is None:
            out[ds.name] = {"files": 0, "recorded": recorded_path.is_file(), "missing": True,
                            "added": [], "removed": [], "changed": []}
            continue
        out[ds.name] = {"files": len(now), "recorded": recorded_path.is_file(), "missing": False,
                        "added": sorted(set(now) - set(before)), "removed": sorted(set(before) - set(now)),
                        "changed": sorted(k for k in set(now) & set(before) if now[k] != before[k])}
    return out


def source_stage(params: Params, name: str) -> str:
    """The DVC stage that fingerprints dataset `name` (dvc.yaml's foreach: source@<index>)."""
    return f"source@{[d.name for d in params.datasets].index(name)}"


__all__ = ["DATA_STAGES", "DvcError", "LOCK_FILE", "WorkspaceBusy", "dataset_changes", "dvc", "source_stage",
           "stages_run", "workspace_lock"]


def check_out_data_version(workspace: Path, params_yaml: str, dvc_lock: str,
                            log: logging.Logger | logging.LoggerAdapter) -> Path:
    """On a training machine: write the submitter's params.yaml and dvc.lock into `workspace` (a
    checkout of this project) and pull the data stages' outs of that version from the DVC remote."""
    from tasks.core.config import load_params
    from tasks.core.storage import atomic_write_bytes
    from tasks.orchestration.remote import configure_dvc_remote

    atomic_write_bytes(workspace / "params.yaml", params_yaml.encode("utf-8"))
    atomic_write_bytes(workspace / "dvc.lock", dvc_lock.encode("utf-8"))
    params = load_params(workspace / "params.yaml")
    log.info("DVC remote: %s", configure_dvc_remote(params, workspace))
    dvc(workspace, "pull", *DATA_STAGES, log=log)
    return workspace / "params.yaml"

"""The command-line tools the pipeline starts (dvc, prefect, ...), found from the running
interpreter's environment first: a service manager that starts `.venv/bin/vitsflow` by path, with
no activated venv and a bare PATH, gets the same tools as an interactive shell."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


class ToolNotFound(FileNotFoundError):
    def __str__(self) -> str:
        return self.args[0]


def bin_dir() -> Path:
    """Where this interpreter's environment keeps its scripts (a venv's bin/)."""
    return Path(sys.executable).parent


def executable(name: str) -> str:
    """The path of tool `name`: next to this interpreter, else on PATH; a clear error otherwise."""
    local = bin_dir() / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ToolNotFound(f"`{name}` not found: neither in {bin_dir()} (this Python's environment) nor on "
                           f"PATH; install the project's requirements (bash scripts/setup.sh)")
    return found


def env_with_bin_dir(env: dict[str, str]) -> dict[str, str]:
    """`env` with this environment's bin/ first on PATH, for tools that start others (dvc runs `vitsflow`)."""
    return {**env, "PATH": os.pathsep.join(filter(None, [str(bin_dir()), env.get("PATH", "")]))}

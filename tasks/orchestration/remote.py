"""The DVC remote for every out, from params.yaml `storage` or the environment.

`storage.uri` (or VITSFLOW_STORAGE_URI) names `s3://bucket/prefix` or `file://path`; DVC's cache
goes under `<uri>/dvc`. The endpoint (`storage.endpoint_url`, AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL) is written to `.dvc/config.local`, which git ignores. Credentials are never
written anywhere: DVC and boto3 read them from the environment or an AWS profile.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional

from tasks.core.config import Params, resolve_local
from tasks.core.tools import env_with_bin_dir, executable

REMOTE_NAME = "storage"


def remote_url(params: Params, root: Path) -> str:
    uri = os.environ.get("VITSFLOW_STORAGE_URI") or params.storage.uri
    if uri.startswith("s3://"):
        return uri.rstrip("/") + "/dvc"
    return str(resolve_local(root, uri) / "dvc")


def endpoint_url(params: Params) -> Optional[str]:
    return params.storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _dvc(root: Path, *args: str) -> None:
    proc = subprocess.run([executable("dvc"), *args], cwd=root, capture_output=True, text=True,
                          env=env_with_bin_dir(dict(os.environ)))
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def configure_dvc_remote(params: Params, root: Path) -> dict[str, Optional[str]]:
    """Make `storage` the default DVC remote; returns what was set (never a credential)."""
    url = remote_url(params, root)
    _dvc(root, "remote", "add", "--local", "--force", "--default", REMOTE_NAME, url)
    endpoint = endpoint_url(params) if url.startswith("s3://") else None
    if endpoint:
        _dvc(root, "remote", "modify", "--local", REMOTE_NAME, "endpointurl", endpoint)
    if params.storage.region and url.startswith("s3://"):
        _dvc(root, "remote", "modify", "--local", REMOTE_NAME, "region", params.storage.region)
    return {"remote": REMOTE_NAME, "url": url, "endpointurl": endpoint}

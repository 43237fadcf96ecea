"""`vitsflow train`: the Prefect flow `train` launching torchrun (2 processes, gloo on CPU), the run
manifest it writes, and a second run that resumes instead of starting over."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tasks.checkpoints import CheckpointStore
from tasks.storage import open_storage

REPO = Path(__file__).resolve().parents[2]


def test_train_has_help():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "resumes" in result.output


@pytest.fixture()
def project(train_corpus, tmp_path) -> Path:
    for rel in ("data/ingest", "data/text", "data/bert", "data/spec"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).symlink_to(train_corpus / rel)
    data = yaml.safe_load((train_corpus / "params.yaml").read_text())
    data["train"].update(max_steps=2, save_interval=100, eval_interval=100, nproc=2, batch_size=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def vitsflow_train(project: Path, prefect_server: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PREFECT_API_URL=prefect_server, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(Path(sys.executable).with_name("vitsflow")), "train"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_the_train_flow_runs_torchrun_writes_the_manifest_and_resumes(project, prefect_server):
    first = vitsflow_train(project, prefect_server)
    manifest = json.loads((project / "train/manifest.json").read_text())
    run_id = manifest["run_id"]
    assert run_id.startswith("bert-vits2-2.3-") and manifest["checkpoint"]["step"] == 2
    assert manifest["checkpoint"]["uri"] == f"file://storage/runs/{run_id}/step_00000002/"
    assert manifest["metrics"]["val_loss"] > 0
    assert set(manifest["lineage"]) >= {"git_commit", "dvc_lock_sha256", "params_sha256"}
    assert "torch.distributed.run" in first.stdout + first.stderr
    _, state, _ = CheckpointStore(open_storage("file://storage", project), run_id).load()
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # both ranks' RNG states
    assert (project / "logs" / run_id).is_dir()

    second = vitsflow_train(project, prefect_server)
    assert f"resumed run {run_id} at step 2" in second.stdout + second.stderr
    assert json.loads((project / "train/manifest.json").read_text()) == manifest

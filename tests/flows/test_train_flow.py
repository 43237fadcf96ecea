"""`vitsflow train`: the Prefect flow `train` launching torchrun (2 processes, gloo on CPU), the run
manifest it writes, and a second run that resumes instead of starting over."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tasks.core.checkpoints import CheckpointStore
from tasks.core.storage import open_storage

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


@pytest.mark.slow
def test_the_train_flow_runs_torchrun_writes_the_manifest_and_resumes(project, prefect_server):
    first = vitsflow_train(project, prefect_server)
    manifest = json.loads((project / "train/run.json").read_text())
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
    assert json.loads((project / "train/run.json").read_text()) == manifest


@pytest.mark.slow
def test_two_nodes_train_one_run_the_flow_on_one_and_train_node_on_the_other(project, prefect_server):
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["train"]["nproc"] = 1  # one process per "machine": the world of 2 comes from the rendezvous
    (project / "params.yaml").write_text(yaml.safe_dump(data))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # $(RUN_TAG): a reference Kubernetes would leave unexpanded (see flows/train.py)
    env = dict(os.environ, PREFECT_API_URL=prefect_server, OMP_NUM_THREADS="1", RUN_TAG="two-nodes",
               TORCHRUN_ARGS=f"--nnodes=2 --rdzv_backend=c10d --rdzv_endpoint=127.0.0.1:{port} --rdzv_id=$(RUN_TAG)")
    exe = str(Path(sys.executable).with_name("vitsflow"))
    node = subprocess.Popen([exe, "train-node"], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        flow = subprocess.run([exe, "train"], cwd=project, env=env, capture_output=True, text=True, timeout=600)
        node_out = node.communicate(timeout=120)[0]
    finally:
        node.kill()
    assert flow.returncode == 0, flow.stdout[-4000:] + flow.stderr[-4000:]
    assert node.returncode == 0, node_out[-4000:]
    assert "--rdzv_id=two-nodes" in flow.stdout + flow.stderr and "--rdzv_id=two-nodes" in node_out
    manifest = json.loads((project / "train/run.json").read_text())
    assert manifest["checkpoint"]["step"] == 2
    _, state, _ = CheckpointStore(open_storage("file://storage", project), manifest["run_id"]).load()
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # one rank on each "machine"


def test_train_node_needs_a_multi_node_rendezvous(project):
    env = dict(os.environ, TORCHRUN_ARGS="")
    proc = subprocess.run([str(Path(sys.executable).with_name("vitsflow")), "train-node", "--params", "params.yaml"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "TORCHRUN_ARGS" in proc.stderr


def test_train_node_refuses_a_flow_run_that_trains_on_its_own_checkout(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.train import train_flow, train_node

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(train_flow, parameters={"params_path": "params.yaml"})
        with pytest.raises(ValueError, match="carries no params_yaml"):
            train_node(flow_run_id=str(run.id))


def test_torchrun_runs_standalone_unless_a_rendezvous_names_several_nodes():
    from tasks.training.launch import torchrun_args

    assert torchrun_args(2, {}) == ["--standalone", "--nproc_per_node=2"]
    one = "--nnodes=1 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=$(JOB_NAME)-0.rdzv:29400"
    assert torchrun_args(2, {"TORCHRUN_ARGS": one}) == ["--standalone", "--nproc_per_node=4"]  # no service needed
    many = "--nnodes 2 --rdzv_backend=c10d --rdzv_endpoint=$(JOB_NAME)-0.vitsflow-rdzv:29400 --rdzv_id=${JOB_NAME}"
    pod = {"TORCHRUN_ARGS": many, "JOB_COMPLETION_INDEX": "1", "HOSTNAME": "train-abc12-1"}
    assert torchrun_args(8, pod) == ["--nnodes", "2", "--rdzv_backend=c10d",
                                     "--rdzv_endpoint=train-abc12-0.vitsflow-rdzv:29400", "--rdzv_id=train-abc12",
                                     "--nproc_per_node=8"]
    with pytest.raises(ValueError, match="JOB_NAME"):  # not an indexed Job's pod: nothing to derive it from
        torchrun_args(1, {"TORCHRUN_ARGS": many})
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_args(1, {"TORCHRUN_ARGS": "--nnodes=2"})
    assert torchrun_args(1, {"TORCHRUN_ARGS": "--nnodes 2 --rdzv-endpoint h:1 --nproc-per-node 3"})[-1] == "3"

"""The `retrain` deployment end to end: a real Prefect server, moto's S3 server for checkpoints and
the DVC remote, `vitsflow deploy`, `vitsflow serve` (the runner), a process worker on the GPU work
pool in a separate checkout (the "GPU machine"), and one "run now" of `retrain` on the demo corpus."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from tests.helpers import edit_params, pipeline_project, run

pytestmark = pytest.mark.slow  # end to end: minutes, not seconds

BUCKET = "vf-retrain"
POOL, TRAIN = "gpu-e2e", "e2e"
CRON, TZ = "30 4 * * 1-5", "Europe/Berlin"
STAGE_FLOWS = ["demo", "ingest", "text", "bert", "spec", "stats", "train", "evaluate"]


def api(server: str, path: str, body: dict | None = None):
    req = urllib.request.Request(f"{server}{path}", method="POST" if body is not None else "GET",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    for attempt in range(5):
        try:
            return json.loads(urllib.request.urlopen(req, timeout=30).read())
        except urllib.error.HTTPError as err:
            # Prefect's server answers 503 while its database is busy (once, 2026-12-07, with the
            # other worker's stages writing to it): a client retries that, as Prefect's own does
            if err.code != 503 or attempt == 4:
                raise
            time.sleep(2)


@pytest.fixture(scope="module")
def env(prefect_server) -> dict:
    return {"PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3_endpoint) -> Path:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    root = pipeline_project(tmp_path_factory.mktemp("retrain"))

    def edit(p):
        p["storage"].update(uri=f"s3://{BUCKET}/demo", endpoint_url=s3_endpoint)
        p["retrain"].update(training="work_pool", work_pool=POOL, train_deployment=TRAIN)
        p["schedule"].update(cron=CRON, timezone=TZ)
    edit_params(root, edit)
    git = ["git", "-c", "user.name=vitsflow-test", "-c", "user.email=test@vitsflow.invalid"]
    run(git + ["add", "-A"], root)
    run(git + ["commit", "-q", "-m", "the project"], root)
    return root


@pytest.fixture(scope="module")
def deployed(project, env) -> dict:
    out = run(["vitsflow", "deploy"], project, env, timeout=300)
    return json.loads(out[out.index("{"):out.rindex("}") + 1])


def test_deploy_registers_the_scheduled_retrain_the_train_deployment_on_its_pool_and_the_gpu_limit(
        project, deployed, env, prefect_server):
    retrain = api(prefect_server, f"/deployments/{deployed['retrain']['id']}")
    assert retrain["name"] == "retrain" and retrain["parameters"] == {"params_path": str(project / "params.yaml")}
    [schedule] = retrain["schedules"]
    assert schedule["schedule"]["cron"] == CRON and schedule["schedule"]["timezone"] == TZ and schedule["active"]
    assert retrain["global_concurrency_limit"]["limit"] == 1  # a run due while one runs waits its turn
    train = api(prefect_server, f"/deployments/{deployed['train']['id']}")
    assert train["name"] == TRAIN and train["work_pool_name"] == POOL
    assert api(prefect_server, f"/work_pools/{POOL}")["type"] == "process"
    assert api(prefect_server, "/v2/concurrency_limits/gpu")["limit"] == 1
    again = json.loads((out := run(["vitsflow", "deploy"], project, env, timeout=300))[out.index("{"):])
    assert again["retrain"]["id"] == deployed["retrain"]["id"] and again["train"]["id"] == deployed["train"]["id"]
    assert len(api(prefect_server, f"/deployments/{deployed['retrain']['id']}")["schedules"]) == 1


def _wait_for(server: str, flow_run_id: str, timeout: float, logs: list[Path]) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        fr = api(server, f"/flow_runs/{flow_run_id}")
        if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return fr
        time.sleep(5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    pytest.fail(f"retrain flow run {flow_run_id} did not finish in {timeout} s\n{tails}")


def test_a_retrain_run_started_without_the_venv_on_path_trains_on_the_gpu_pool_evaluates_promotes_and_publishes_a_summary(
        project, deployed, env, prefect_server, tmp_path_factory):
    gpu_machine = tmp_path_factory.mktemp("gpu_machine") / "vitsflow"
    run(["git", "clone", "-q", str(project), str(gpu_machine)], project.parent)  # code only: no data, no dvc.lock
    # Both started by absolute path with a PATH that lacks the venv, as a service manager starts them:
    # every tool the runs need (dvc, torchrun, prefect) is found from the interpreter's environment.
    full_env = dict(os.environ, PATH="/usr/bin:/bin", **env)
    full_env.pop("VIRTUAL_ENV", None)
    logs = [tmp_path_factory.mktemp("logs") / name for name in ("worker.log", "serve.log")]
    worker = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", POOL,
                               "--type", "process"], cwd=gpu_machine, env=dict(full_env, VITSFLOW_WORKSPACE=str(
                                   gpu_machine)), stdout=logs[0].open("w"), stderr=subprocess.STDOUT)
    runner = subprocess.Popen([str(Path(sys.executable).with_name("vitsflow")), "serve"], cwd=project, env=full_env, stdout=logs[1].open("w"),
                              stderr=subprocess.STDOUT)
    try:  # "run now", as the UI's button does
        flow_run = api(prefect_server, f"/deployments/{deployed['retrain']['id']}/create_flow_run", {})
        done = _wait_for(prefect_server, flow_run["id"], 1800, logs)
    finally:
        for proc in (runner, worker):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-6000:]}" for p in logs)
    assert done["state"]["type"] == "COMPLETED", tails

    # every stage ran as its own flow run; training ran on the work pool, in the other checkout
    flows = {f["id"]: f["name"] for f in api(prefect_server, "/flows/filter", {})}
    runs = api(prefect_server, "/flow_runs/filter", {"sort": "START_TIME_ASC"})
    completed = [(flows[r["flow_id"]], r) for r in runs if r["state_type"] == "COMPLETED"]
    assert set(STAGE_FLOWS) | {"retrain"} <= {name for name, _ in completed}
    pooled = [r for name, r in completed if name == "train" and r["deployment_id"] == deployed["train"]["id"]]
    assert len(pooled) == 1 and pooled[0]["work_pool_name"] == POOL
    assert (gpu_machine / "data/bert/meta.json").is_file()  # it pulled the data version from the DVC remote

    # the checkpoint and its manifest on S3, the promoted production pointer, the DVC remote
    manifest = json.loads((project / "train/run.json").read_text())
    s3 = boto3.client("s3")
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])}
    bundle = manifest["checkpoint"]["uri"].removeprefix(f"s3://{BUCKET}/").rstrip("/")
    assert f"{bundle}/manifest.json" in keys and f"demo/runs/{manifest['run_id']}/latest.json" in keys
    ckpt = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{bundle}/manifest.json")["Body"].read())
    assert ckpt["lineage"]["dvc_lock_sha256"] and ckpt["lineage"]["params_sha256"]
    pointer = json.loads(s3.get_object(Bucket=BUCKET, Key="demo/models/demo/production.json")["Body"].read())
    assert pointer["checkpoint"] == manifest["checkpoint"]
    assert any(k.startswith("demo/dvc/") for k in keys)  # dvc push

    # the summary artifact: metrics against production, the decision, the checkpoint
    [artifact] = api(prefect_server, "/artifacts/filter", {"artifacts": {"key": {"any_": ["retrain-summary"]}}})
    assert artifact["flow_run_id"] == flow_run["id"] and artifact["type"] == "markdown"
    assert "**promoted to production**" in artifact["data"] and manifest["checkpoint"]["uri"] in artifact["data"]
    assert "| mcd_db |" in artifact["data"]
    assert api(prefect_server, "/v2/concurrency_limits/gpu")["active_slots"] == 0  # the slot was released


def test_a_retrain_in_a_busy_workspace_fails_at_once_naming_the_holder(tmp_path, env):
    from tasks.orchestration.workspace import workspace_lock

    root = pipeline_project(tmp_path)
    exe = str(Path(sys.executable).with_name("vitsflow"))
    with workspace_lock(root, holder="a retrain started by the test"):
        proc = subprocess.run([exe, "retrain"], cwd=root, env=dict(os.environ, **env), capture_output=True,
                              text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "another run holds the workspace lock" in proc.stderr and "started by the test" in proc.stderr
    assert not (root / "data").exists()  # nothing ran


def test_deploy_with_an_image_runs_train_in_it_on_a_kubernetes_pool_made_from_the_infra_template(
        project, env, prefect_server):
    template = json.loads((Path(__file__).resolve().parents[2] / "infra/k8s/gpu-work-pool.json").read_text())
    api(prefect_server, "/work_pools/", {"name": "k8s-gpu", "type": "kubernetes", "base_job_template": template})
    # the project's params with the Kubernetes pool (runs after the retrain run: it re-registers `retrain`)
    params = project / "params.k8s.yaml"
    params.write_text((project / "params.yaml").read_text().replace(f"work_pool: {POOL}", "work_pool: k8s-gpu")
                      .replace(f"train_deployment: {TRAIN}", "train_deployment: k8s"))
    out = run(["vitsflow", "deploy", "--params", str(params), "--image", "registry.example.com/vitsflow:1.0"],
              project, env, timeout=300)
    train = api(prefect_server, f"/deployments/{json.loads(out[out.index('{'):])['train']['id']}")
    assert train["work_pool_name"] == "k8s-gpu" and train["job_variables"] == {"image": "registry.example.com/vitsflow:1.0"}
    assert train["entrypoint"] == "flows/train.py:train_flow" and not train["pull_steps"]  # the image's own code
    params.unlink()


def test_deploy_with_an_image_on_a_process_pool_says_what_to_do(project, env):
    proc = subprocess.run(["vitsflow", "deploy", "--image", "vitsflow:latest"], cwd=project, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:"
                                                           f"{os.environ['PATH']}", **env))
    assert proc.returncode == 2 and "runs no images" in proc.stderr and "infra/k8s/gpu-work-pool.json" in proc.stderr

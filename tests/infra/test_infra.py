"""infra/: the files parse, carry what they promise, and the GPU job template is one Prefect accepts."""
import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from prefect.server.schemas.actions import WorkPoolCreate

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_compose_has_the_stack_and_no_literal_credentials():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    assert {"postgres", "prefect-server", "worker", "minio", "minio-bucket", "retrain"} <= set(compose["services"])
    assert compose["services"]["retrain"]["command"] == "vitsflow serve"  # the scheduled retrain runner
    assert "--pool gpu" in compose["services"]["worker"]["command"]  # params.yaml retrain.work_pool
    assert "postgresql+asyncpg" in compose["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "mc mb" in compose["services"]["minio-bucket"]["entrypoint"]
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "ACCESS_KEY", "ROOT_USER")):
                assert str(value).startswith("${"), f"{key} must come from the environment"


def test_dockerfile_builds_on_cuda_with_the_pinned_lock():
    text = (INFRA / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM nvidia/cuda:" in text
    assert "requirements.lock" in text and "espeak-ng" in text
    # a DVC workspace of the project, where a `train` job adopts the submitted params.yaml and dvc.lock
    assert "COPY dvc.yaml params.yaml" in text and "ENV VITSFLOW_WORKSPACE=/opt/vitsflow" in text


def test_gpu_job_template_is_a_valid_prefect_work_pool_template():
    template = json.loads((INFRA / "k8s" / "gpu-work-pool.json").read_text())
    WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=template)  # Prefect's own check
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    jsonschema.validate(defaults, template["variables"])
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus_per_node }}"
    assert container["envFrom"][0]["secretRef"]["name"] == "{{ s3_secret_name }}"
    assert "--rdzv_backend=c10d" in defaults["env"]["TORCHRUN_ARGS"]


def test_a_template_using_an_undeclared_variable_is_refused():
    template = json.loads((INFRA / "k8s" / "gpu-work-pool.json").read_text())
    template["job_configuration"]["extra"] = "{{ not_declared }}"
    with pytest.raises(ValueError, match="not_declared"):
        WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=template)


def test_pods_after_the_first_of_a_training_job_join_it_as_train_nodes(tmp_path):
    mock_bin = tmp_path / "mock_bin"  # a mock `vitsflow` that says how it was called
    mock_bin.mkdir()
    (mock_bin / "vitsflow").write_text("#!/bin/sh\necho \"vitsflow $*\"\n")
    (mock_bin / "vitsflow").chmod(0o755)
    entry = str(INFRA / "entrypoint.sh")

    def run(**env):
        return subprocess.run(["sh", entry, "echo", "flow run"], env={"PATH": f"{mock_bin}:/usr/bin:/bin", **env},
                              capture_output=True, text=True, check=True).stdout.strip()

    assert run() == "flow run"  # not in a Job: the command as given
    assert run(JOB_COMPLETION_INDEX="0") == "flow run"  # pod 0 runs the Prefect flow run
    assert run(JOB_COMPLETION_INDEX="2") == "vitsflow train-node"
    assert 'ENTRYPOINT ["vitsflow-entrypoint"]' in (INFRA / "Dockerfile").read_text()


def test_the_rendezvous_service_selects_the_training_pods():
    service = yaml.safe_load((INFRA / "k8s" / "rdzv-service.yaml").read_text())
    template = json.loads((INFRA / "k8s" / "gpu-work-pool.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]
    props = template["variables"]["properties"]
    assert service["spec"]["clusterIP"] == "None" and service["metadata"]["name"] == props["rdzv_service"]["default"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["subdomain"] == "{{ rdzv_service }}"
    assert service["metadata"]["namespace"] == props["namespace"]["default"]
    port = service["spec"]["ports"][0]["port"]
    assert f"-0.{service['metadata']['name']}:{port}" in props["env"]["default"]["TORCHRUN_ARGS"]

"""infra/: the files parse, carry what they promise, and the GPU job template is one Prefect accepts."""
import json
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

"""A stage killed with SIGKILL half way resumes from its cache and writes the same bytes."""
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.cache import ResultCache
from tests.helpers import aishell_bv2_list, sigkill_once_cached, write_params

pytestmark = pytest.mark.slow  # end to end: minutes, not seconds


def vitsflow(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("vitsflow")
    return subprocess.Popen([str(exe), *args], cwd=cwd, env=dict(os.environ, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_speech, prefect_server):
    root = tmp_path_factory.mktemp("resume")
    aishell_bv2_list(shared_speech, root / "zh", 30)
    datasets = [{"name": "lj", "language": "en", "path": str(shared_speech / "en_ljspeech"),
                 "format": "ljspeech", "speaker": "lj"},
                {"name": "cv", "language": "ja", "path": str(shared_speech / "ja_commonvoice"),
                 "format": "ljspeech", "speaker": "cv"},
                {"name": "aishell", "language": "zh", "path": "zh", "format": "bv2_list"}]
    runtime = {"workers": 1, "in_flight_chunks": 1}
    features = {"bert": {"batch_size": 1, "chunk_size": 1, "device": "cpu"}}
    write_params(root, datasets, runtime=runtime | {"cache_dir": ".cache/killed"}, features=features)
    (root / "params.yaml").rename(root / "killed.yaml")
    write_params(root, datasets, runtime=runtime | {"cache_dir": ".cache/reference"}, features=features)
    env = {"PREFECT_API_URL": prefect_server}
    finish(vitsflow(["ingest", "--params", "params.yaml"], root, env))
    finish(vitsflow(["text", "--params", "params.yaml"], root, env))
    return root, env


def test_a_killed_bert_stage_resumes_and_matches_an_uninterrupted_run(project):
    root, env = project
    finish(vitsflow(["bert", "--params", "params.yaml", "--out", "data/bert_reference"], root, env))
    total = len((root / "data/bert_reference/index.jsonl").read_text().splitlines())

    proc = vitsflow(["bert", "--params", "killed.yaml", "--out", "data/bert"], root, env)
    db = root / ".cache/killed/bert.sqlite"
    done = sigkill_once_cached(proc, db, 5)
    assert proc.returncode == -signal.SIGKILL and 5 <= done < total, (proc.returncode, done, total)
    assert not (root / "data/bert").exists()  # nothing half-written under the real name

    out = finish(vitsflow(["bert", "--params", "killed.yaml", "--out", "data/bert"], root, env))
    reused = len(ResultCache(db)) - int(out.split("utterances (")[1].split(" computed")[0])
    assert reused >= done  # the finished part was not recomputed
    assert digests(root / "data/bert") == digests(root / "data/bert_reference")


def test_spec_from_two_worker_processes_matches_the_one_thread_stage(project):
    import yaml

    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["runtime"].update(workers=2, in_flight_chunks=4, cache_dir=".cache/spec-processes")
    (root / "processes.yaml").write_text(yaml.safe_dump(params))
    finish(vitsflow(["spec", "--params", "params.yaml", "--out", "data/spec_thread"], root, env))
    finish(vitsflow(["spec", "--params", "processes.yaml", "--out", "data/spec_processes"], root, env))
    assert digests(root / "data/spec_processes") == digests(root / "data/spec_thread")
    assert list((root / ".cache/spec-processes/spec.blobs").rglob("*"))  # the workers committed the payloads

"""A stage killed with SIGKILL half way resumes from its cache and writes the same bytes."""
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.cache import Entry, ResultCache
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
def project(tmp_path_factory, real_speech, prefect_server):
    root = tmp_path_factory.mktemp("resume")
    aishell_bv2_list(real_speech, root / "zh", 30)
    datasets = [{"name": "lj", "language": "en", "path": str(real_speech / "en_ljspeech"),
                 "format": "ljspeech", "speaker": "lj"},
                {"name": "cv", "language": "ja", "path": str(real_speech / "ja_commonvoice"),
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


# stage, the folder it reads (`--in`), what a killed run keeps at least before the kill
KILLED = [("ingest", None, 5), ("text", "data/ingest", 5), ("bert", "data/text", 5), ("spec", "data/ingest", 5)]


@pytest.mark.parametrize("stage, source, at", KILLED)
def test_a_stage_killed_half_way_resumes_and_writes_the_bytes_of_an_uninterrupted_run(project, stage, source, at):
    root, env = project
    src = ["--in", source] if source else []
    ref = root / f"data/{stage}_reference"
    if not ref.exists():
        finish(vitsflow([stage, "--params", "params.yaml", *src, "--out", str(ref.relative_to(root))], root, env))
    summary = json.loads((ref / "summary.json").read_text())
    total = summary["utterances"] + summary["rejects"]

    out_dir = root / f"data/{stage}_killed"
    proc = vitsflow([stage, "--params", "killed.yaml", *src, "--out", str(out_dir.relative_to(root))], root, env)
    db = root / f".cache/killed/{stage}.sqlite"
    done = sigkill_once_cached(proc, db, at)
    assert proc.returncode == -signal.SIGKILL and at <= done < total, (proc.returncode, done, total)
    assert not out_dir.exists()  # nothing half-written under the real name

    out = finish(vitsflow([stage, "--params", "killed.yaml", *src, "--out", str(out_dir.relative_to(root))], root, env))
    reused = len(ResultCache(db)) - int(out.split("utterances (")[1].split(" computed")[0])
    assert reused >= done  # the finished part was not recomputed
    assert digests(out_dir) == digests(ref)


def test_a_payload_file_cut_by_sigkill_mid_write_is_recomputed_and_read_whole(tmp_path):
    """Spectrograms and audio of 64 KiB and more are files beside the cache database: a process
    killed while writing one leaves only a temp file, never a short payload under the entry's name."""
    import textwrap
    import time

    script = textwrap.dedent(f"""
        from pathlib import Path
        from tasks.core.cache import Entry, ResultCache
        ResultCache(Path({str(tmp_path / "c.sqlite")!r})).put_many([("k", Entry({{"n": 1}}, b"x" * (400 << 20)))])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2])
    blobs = tmp_path / "c.blobs"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        partial = [p for p in blobs.rglob("*.tmp") if p.stat().st_size > 0] if blobs.exists() else []
        if partial:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.001)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed mid-write"
    cache = ResultCache(tmp_path / "c.sqlite")
    assert cache.missing(["k"]) == {"k"}  # not committed: the stage computes it again
    assert not [p for p in blobs.rglob("*") if p.is_file() and not p.name.endswith(".tmp")]
    cache.put_many([("k", Entry({"n": 1}, b"y" * (1 << 20)))])
    assert cache.get("k").data == b"y" * (1 << 20)


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

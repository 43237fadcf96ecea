"""`vitsflow daemon`: stage commands run in a warm server and do exactly what a fresh process does."""
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks.cache import ResultCache
from tests.helpers import aishell_bv2_list, ljspeech_subset, sigkill_once_cached, write_params

REPO = Path(__file__).resolve().parents[2]
VITSFLOW = str(Path(sys.executable).with_name("vitsflow"))
STAGES = [["ingest"], ["text"], ["bert"], ["spec"]]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def call(cmd: list[str], root: Path, env: dict, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=root, env=dict(os.environ, **env, **extra), capture_output=True, text=True,
                          timeout=600)


def served(root: Path, env: dict, cmd: list[str] = (VITSFLOW,)) -> int:
    proc = call([*cmd, "daemon", "--status"], root, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return yaml.safe_load(proc.stdout)["served"]


def start_daemon(cmd: list[str], root: Path, env: dict) -> subprocess.Popen:
    log = open(root / "daemon.log", "ab")
    proc = subprocess.Popen([*cmd, "daemon"], cwd=root, env=dict(os.environ, **env), stdout=log, stderr=log)
    deadline = time.time() + 120
    while call([*cmd, "daemon", "--status"], root, env).returncode != 0:
        assert proc.poll() is None and time.time() < deadline, (root / "daemon.log").read_text()
        time.sleep(0.5)
    return proc


def stop_daemon(cmd: list[str], root: Path, env: dict, proc: subprocess.Popen) -> None:
    call([*cmd, "daemon", "--stop"], root, env)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def small_project(root: Path, shared_speech: Path) -> None:
    ljspeech_subset(shared_speech, root / "lj", 12)
    aishell_bv2_list(shared_speech, root / "zh", 12)
    datasets = [{"name": "lj", "language": "en", "path": "lj", "format": "ljspeech", "speaker": "lj"},
                {"name": "aishell", "language": "zh", "path": "zh", "format": "bv2_list"}]
    # batch_size 1: a batch's padding must not differ between the runs compared
    features = {"bert": {"batch_size": 1, "chunk_size": 1, "device": "cpu"}}
    for name, cache in [("cold.yaml", ".cache/cold"), ("killed.yaml", ".cache/killed"), ("params.yaml", ".cache/warm")]:
        write_params(root, datasets, runtime={"workers": 2, "in_flight_chunks": 2, "cache_dir": cache},
                     features=features).rename(root / name)


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_speech, prefect_server):
    """A project, a daemon serving it, and its stages' outs from fresh processes (data_cold/)."""
    root = tmp_path_factory.mktemp("daemon")
    small_project(root, shared_speech)
    # A socket folder of the test's own: a developer's daemon elsewhere is never involved.
    env = {"PREFECT_API_URL": prefect_server, "XDG_RUNTIME_DIR": str(tmp_path_factory.mktemp("run"))}
    for stage in STAGES:
        out = call([VITSFLOW, *stage, "-p", "cold.yaml", "--out", f"data_cold/{stage[0]}",
                    *(["--in", "data_cold/ingest"] if stage[0] in ("text", "spec") else []),
                    *(["--in", "data_cold/text"] if stage[0] == "bert" else [])], root, env, VITSFLOW_DAEMON="off")
        assert out.returncode == 0, out.stdout + out.stderr
    proc = start_daemon([VITSFLOW], root, env)
    yield root, env
    stop_daemon([VITSFLOW], root, env, proc)


def test_stage_commands_run_in_the_daemon_and_write_what_fresh_processes_write(project):
    root, env = project
    before = served(root, env)
    for stage in STAGES:
        out = call([VITSFLOW, *stage], root, env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"{stage[0]}: " in out.stderr and "utterances" in out.stderr  # the flow's log reached the client
        assert "running the command here" not in out.stderr
    assert served(root, env) == before + len(STAGES)
    for stage in STAGES:
        assert digests(root / "data" / stage[0]) == digests(root / "data_cold" / stage[0]), stage
    # Warm, a stage with nothing to do is a fraction of a second of work in the daemon.
    out = call([VITSFLOW, "spec"], root, env)
    assert out.returncode == 0 and "0 computed" in out.stderr, out.stderr


def test_a_failing_command_gets_its_error_and_exit_status_and_the_daemon_goes_on(project):
    root, env = project
    before = served(root, env)
    out = call([VITSFLOW, "ingest", "--params", "missing.yaml"], root, env)
    assert out.returncode == 2 and "missing.yaml" in out.stderr, out.stdout + out.stderr
    out = call([VITSFLOW, "text", "--no-such-option"], root, env)
    assert out.returncode == 2 and "no-such-option" in out.stderr
    assert served(root, env) == before + 2


def test_malformed_requests_are_refused_or_dropped_and_logged_and_the_daemon_goes_on(project, monkeypatch):
    from flows import daemon

    root, env = project
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    before = served(root, env)
    replies = []
    with open(os.devnull, "wb") as null:
        for request in (b"7\n", b"{not json\n", b'{"argv": [["ingest"]]}\n', b'{"argv": "ingest"}\n',
                        b'{"argv": ["ingest"], "cwd": 5}\n'):
            conn = daemon._connect(root)
            assert conn is not None
            with conn:
                socket.send_fds(conn, [request], [null.fileno()] * 2)  # as a client sends stdout and stderr
                replies.append(conn.makefile("rb").readline())
    assert replies[:2] == [b"", b""]  # dropped: not a request at all
    assert all(b'"accepted": false' in r and b"not a stage command" in r for r in replies[2:4]), replies
    assert b'"accepted": false' in replies[4] and b"it serves" in replies[4], replies
    log = (root / "daemon.log").read_text()
    assert "dropped a request that is not a JSON object on one line: a JSON int" in log
    assert "refused (not a stage command)" in log
    assert served(root, env) == before


def test_commands_the_daemon_must_not_run_run_on_their_own(project):
    root, env = project
    before = served(root, env)
    # another environment (a variable that steers the pipeline) or a command that is not a stage
    other = call([VITSFLOW, "ingest", "--out", "data/ingest_other_env"], root, env, VITSFLOW_SOMETHING="1")
    assert other.returncode == 0 and "environment differs" in other.stderr, other.stderr
    assert digests(root / "data/ingest_other_env") == digests(root / "data_cold/ingest")
    g2p = call([VITSFLOW, "g2p", "-l", "en", "-p", "cold.yaml", "Hello there."], root, env)
    assert g2p.returncode == 0 and "HH" in g2p.stdout.upper(), g2p.stdout + g2p.stderr
    off = call([VITSFLOW, "stats", "--out", "reports_off"], root, env, VITSFLOW_DAEMON="off")
    assert off.returncode == 0
    assert served(root, env) == before


def test_a_killed_client_interrupts_its_command_and_a_rerun_resumes(project):
    root, env = project
    total = len((root / "data_cold/bert/index.jsonl").read_text().splitlines())
    killed = [VITSFLOW, "bert", "-p", "killed.yaml", "--in", "data_cold/text", "--out", "data/bert_killed"]
    proc = subprocess.Popen(killed, cwd=root,
                            env=dict(os.environ, **env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = root / ".cache/killed/bert.sqlite"
    done = sigkill_once_cached(proc, db, 2)
    assert proc.returncode == -signal.SIGKILL and 2 <= done < total, (proc.returncode, done, total)
    served(root, env)  # answers once the interrupted command has stopped
    stopped_at = len(ResultCache(db))
    assert stopped_at < total and not (root / "data/bert_killed").exists()

    out = call(killed, root, env)
    assert out.returncode == 0, out.stderr
    assert f"({total - stopped_at} computed" in out.stderr  # the finished part was not recomputed
    assert digests(root / "data/bert_killed") == digests(root / "data_cold/bert")


def test_the_socket_is_private_and_a_second_daemon_is_refused(project):
    root, env = project
    sock = next((Path(env["XDG_RUNTIME_DIR"]) / f"vitsflow-{os.getuid()}").glob("*.sock"))
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700 and stat.S_IMODE(sock.stat().st_mode) == 0o600
    second = call([VITSFLOW, "daemon"], root, env)
    assert second.returncode == 2 and "already serves" in second.stderr


def test_a_code_change_runs_the_command_on_its_own_and_restarts_the_daemon(tmp_path, shared_speech, prefect_server):
    """The project carries its own copy of the code (run with `python -m flows.cli`), and one of its
    files changes while the daemon runs."""
    root = tmp_path / "p"
    root.mkdir()
    small_project(root, shared_speech)
    for name in ("flows", "tasks", "model"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    cli = [sys.executable, "-m", "flows.cli"]
    env = {"PREFECT_API_URL": prefect_server, "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    proc = start_daemon(cli, root, env)
    try:
        assert call([*cli, "ingest"], root, env).returncode == 0
        assert served(root, env, cli) == 1
        with open(root / "tasks/stats.py", "a") as f:
            f.write("# changed\n")
        out = call([*cli, "ingest"], root, env)
        assert out.returncode == 0 and "code changed" in out.stderr and "running the command here" in out.stderr
        deadline = time.time() + 120
        while call([*cli, "daemon", "--status"], root, env).returncode != 0:  # restarting: imports again
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.5)
        assert served(root, env, cli) == 0  # a fresh daemon, with the changed code
        out = call([*cli, "ingest"], root, env)
        assert out.returncode == 0 and "running the command here" not in out.stderr, out.stderr
        assert served(root, env, cli) == 1
    finally:
        stop_daemon(cli, root, env, proc)

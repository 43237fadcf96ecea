"""`vitsflow waveglow` (the DVC stage as a Prefect flow on a real server), `vitsflow vocode`, the
evaluate stage's copy-synthesis step and the WaveGlow export, on the tiny corpus with a tiny
random-init WaveGlow: these prove the plumbing (records, resume, files, shapes, errors), not what
the vocoder sounds like (model/waveglow.py's equality with NVIDIA: tests/model/test_waveglow.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.core.config import load_params

pytestmark = pytest.mark.slow  # the stage as a process, with a trained vocoder

TINY_VOCODER = {"enabled": True, "device": "cpu", "batch_size": 2, "max_steps": 3, "save_interval": 2,
                "eval_interval": 2, "log_interval": 1, "val_max_utterances": 2,
                "waveglow_config": {"n_mel_channels": 80, "n_flows": 4, "n_group": 8, "n_early_every": 2,
                                    "n_early_size": 2, "WN_config": {"n_layers": 2, "n_channels": 16, "kernel_size": 3}},
                "data_config": {"segment_length": 4096}}


def make_project(train_corpus: Path, work: Path, vocoder: dict) -> Path:
    for rel in ("data/ingest", "data/text"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).symlink_to(train_corpus / rel)
    data = yaml.safe_load((train_corpus / "params.yaml").read_text())
    data["vocoder"] = vocoder
    data["runtime"] = {"cache_dir": ".cache/vitsflow"}
    data["train"]["log_dir"] = "logs"
    data["eval"] = {"max_utterances": 2, "samples": 1, "models": {"asr": None, "mos": "dnsmos", "speaker": "ge2e"}}
    (work / "params.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    return work


def vitsflow(project: Path, prefect_server: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PREFECT_API_URL=prefect_server, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(Path(sys.executable).with_name("vitsflow")), *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert (proc.returncode == 0) == ok, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def trained(train_corpus, tmp_path_factory, prefect_server) -> Path:
    """A project whose waveglow stage ran once (3 steps)."""
    project = make_project(train_corpus, tmp_path_factory.mktemp("waveglow"), TINY_VOCODER)
    vitsflow(project, prefect_server, "waveglow")
    return project


def test_the_waveglow_stage_trains_writes_its_record_and_a_rerun_resumes_instead_of_starting_over(trained,
                                                                                                  prefect_server):
    record = json.loads((trained / "train/waveglow.json").read_text())
    run_id = record["run_id"]
    assert record["enabled"] is True and run_id.startswith("waveglow-")
    assert record["checkpoint"] == {"uri": f"file://storage/runs/{run_id}/step_00000003/", "step": 3}
    assert np.isfinite(record["metrics"]["val_loss"]) and record["sample_rate"] == 22050
    assert record["clips"] >= 8 and set(record["lineage"]) >= {"git_commit", "params_sha256"}
    assert (trained / ".cache/vitsflow/waveglow.sqlite").is_file()  # the features, cached by content
    again = vitsflow(trained, prefect_server, "waveglow")
    assert json.loads((trained / "train/waveglow.json").read_text()) == record
    assert "(0 computed)" in again.stdout + again.stderr  # every clip's features came from the cache


def test_the_waveglow_stage_off_writes_only_a_record_saying_so(train_corpus, tmp_path, prefect_server):
    project = make_project(train_corpus, tmp_path, {"enabled": False})
    vitsflow(project, prefect_server, "waveglow")
    record = json.loads((project / "train/waveglow.json").read_text())
    assert record == {"enabled": False, "reason": "params vocoder.enabled is false"}
    assert not (project / "storage").exists()


def test_vocode_copy_synthesises_a_recording_and_vocodes_a_mel_file(trained, prefect_server, tmp_path):
    from tasks.core.shards import read_pcm
    from tasks.prep.audio import decode, wav_bytes
    from tasks.prep.ingest import read_index

    row = read_index(trained / "data/ingest")[0]
    pcm = read_pcm(trained / "data/ingest", row).astype(np.float32) / 32768.0
    (tmp_path / "in.wav").write_bytes(wav_bytes(pcm, 22050))
    out = tmp_path / "out.wav"
    result = vitsflow(trained, prefect_server, "vocode", "--model", "train/waveglow.json", "--in",
                      str(tmp_path / "in.wav"), "--out", str(out))
    wav, sr = decode(out.read_bytes(), "out.wav")
    assert sr == 22050 and len(wav) == len(pcm) and np.isfinite(wav).all()
    assert json.loads(result.stdout.strip().splitlines()[-1])["sample_rate"] == 22050

    np.save(tmp_path / "mel.npy", np.full((80, 12), -5.0, dtype=np.float32))
    vitsflow(trained, prefect_server, "vocode", "-m", "train/waveglow.json", "--mel", str(tmp_path / "mel.npy"),
             "-o", str(out), "--sigma", "0", "--denoise", "0")
    assert len(decode(out.read_bytes(), "out.wav")[0]) == 12 * 256


def test_vocode_refuses_a_wrong_mel_another_rate_and_a_foreign_file_naming_it(trained, prefect_server, tmp_path):
    from tasks.prep.audio import wav_bytes

    np.save(tmp_path / "mel64.npy", np.zeros((64, 10), dtype=np.float32))
    bad = vitsflow(trained, prefect_server, "vocode", "-m", "train/waveglow.json", "--mel",
                   str(tmp_path / "mel64.npy"), "-o", str(tmp_path / "x.wav"), ok=False)
    assert "mel64.npy" in bad.stderr and "[80, frames]" in bad.stderr and "[64, 10]" in bad.stderr
    (tmp_path / "16k.wav").write_bytes(wav_bytes(np.zeros(16000, dtype=np.float32), 16000))
    bad = vitsflow(trained, prefect_server, "vocode", "-m", "train/waveglow.json", "--in", str(tmp_path / "16k.wav"),
                   "-o", str(tmp_path / "x.wav"), ok=False)
    assert "16k.wav" in bad.stderr and "16000 Hz" in bad.stderr and "--resample" in bad.stderr
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint at all")
    bad = vitsflow(trained, prefect_server, "vocode", "-m", str(tmp_path / "foreign.pt"), "--mel",
                   str(tmp_path / "mel64.npy"), "-o", str(tmp_path / "x.wav"), ok=False)
    assert "foreign.pt" in bad.stderr and "not a" in bad.stderr
    assert not (tmp_path / "x.wav").exists()  # nothing half-written


def test_random_init_copy_synthesis_is_judged_like_the_voice_beside_it_in_the_report(trained):
    from tasks.evaluation.copy_synthesis import RESULT_NAME, judge_beside_voice
    from tasks.prep.ingest import read_index

    params = load_params(trained / "params.yaml")
    ids = [r["id"] for r in read_index(trained / "data/ingest") if r["split"] == "val"][1:3]
    (trained / "eval").mkdir(exist_ok=True)
    (trained / "eval/report.md").write_text("# the voice's report\n")
    voice = {"overall": {"mos": 2.0, "speaker_similarity": 0.5, "mcd_db": 11.0}}
    section = judge_beside_voice(params, trained, voice, ids, params_path=trained / "params.yaml")
    result = json.loads((trained / "eval" / RESULT_NAME).read_text())
    assert result["enabled"] is True and [r["id"] for r in result["rows"]] == ids  # the voice's utterances
    assert result["vocoder"]["run_id"].startswith("waveglow-") and result["vocoder"]["step"] == 3
    for key in ("mcd_db", "vuv_error", "mos", "mos_reference", "speaker_similarity"):
        assert isinstance(result["overall"][key], float), key
    assert all("f0_rmse_cents" in r for r in result["rows"])  # null where no frame pair is voiced (noise)
    assert result["judges"] == {"mos": "dnsmos", "mos_reference": "dnsmos", "speaker_similarity": "ge2e"}
    from tasks.evaluation.evaluate import _safe_name  # the voice's sample names

    assert sorted(p.name for p in (trained / "eval/samples").glob("*.wg.wav")) == [f"{_safe_name(ids[0])}.wg.wav"]
    report = (trained / "eval/report.md").read_text()
    assert report.startswith("# the voice's report\n") and report.endswith(section)
    assert "| voice (end-to-end) | 2.00 |" in report and "| WaveGlow copy-synthesis |" in report

    off = params.model_copy(update={"vocoder": params.vocoder.model_copy(update={"enabled": False})})
    assert judge_beside_voice(off, trained, voice, ids) is None
    assert json.loads((trained / "eval" / RESULT_NAME).read_text())["enabled"] is False


def test_the_export_writes_waveglow_as_torchscript_and_onnx_equal_to_the_eager_model(trained, tmp_path):
    import onnxruntime as ort
    import torch

    from tasks.inference.vocode import export_waveglow, load_vocoder

    vocoder = load_vocoder(trained / "train/waveglow.json", trained / "params.yaml")
    mel = np.random.default_rng(0).normal(-5, 1, (1, 80, 23)).astype(np.float32)
    first = vocoder.vocode(mel[0], sigma=0.6, seed=7)  # builds the inference module and the denoiser
    assert np.array_equal(first, vocoder.vocode(mel[0], sigma=0.6, seed=7))  # one seed, one audio
    config = export_waveglow(vocoder, tmp_path)
    folder = tmp_path / "waveglow"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "waveglow.onnx",
                                                        "waveglow.ts"]
    assert config["weight_norm"] == "removed" and config["step"] == 3
    again = load_vocoder(tmp_path, trained / "params.yaml")  # the export folder loads back
    eager = again.vocode(mel[0], sigma=0.0, denoise=0.0)
    assert np.abs(eager - vocoder.vocode(mel[0], sigma=0.0, denoise=0.0)).max() <= 1e-6
    onnx = ort.InferenceSession(str(folder / "waveglow.onnx"), providers=["CPUExecutionProvider"])
    got = onnx.run(None, {"mel": mel, "sigma": np.array(0.0, dtype=np.float32)})[0][0]
    assert np.abs(got - eager).max() <= 1e-4
    ts = torch.jit.load(str(folder / "waveglow.ts"))
    assert np.abs(ts(torch.from_numpy(mel), torch.tensor(0.0))[0].numpy() - eager).max() <= 1e-5
    (folder / "model.safetensors").write_bytes(b"x" * 64)
    with pytest.raises(ValueError, match="sha256"):
        load_vocoder(tmp_path)


def test_a_val_clip_too_short_for_the_vocoders_mel_fails_alone_in_copy_synthesis(trained, tmp_path):
    """The waveglow stage's reject (tasks/prep/clips.py) is still a val utterance: copy-synthesis
    lists it in `failed` and judges the others."""
    import hashlib
    import shutil

    from tasks.core.shards import read_jsonl, write_jsonl
    from tasks.evaluation.copy_synthesis import comparison_markdown, copy_synthesis

    root = tmp_path / "project"
    root.mkdir()
    for entry in trained.iterdir():
        if entry.name != "data":
            (root / entry.name).symlink_to(entry)
    (root / "data").mkdir()
    for entry in (trained / "data").iterdir():
        if entry.name != "ingest":
            (root / "data" / entry.name).symlink_to(entry)
    shutil.copytree((trained / "data/ingest").resolve(), root / "data/ingest")
    rows = list(read_jsonl(root / "data/ingest/index.jsonl"))
    val = [r for r in rows if r["split"] == "val"][:2]
    val[0].update(nbytes=2 * 400, num_samples=400, sha256=hashlib.sha256(val[0]["sha256"].encode()).hexdigest())
    write_jsonl(root / "data/ingest/index.jsonl", rows)
    params = load_params(root / "params.yaml")
    result = copy_synthesis(params, root, str(trained / "train/waveglow.json"), write=False,
                            ids=[r["id"] for r in val], params_path=root / "params.yaml")
    [failed] = result["failed"]
    assert failed["id"] == val[0]["id"] and "too short for a mel" in failed["error"]
    assert [r["id"] for r in result["rows"]] == [val[1]["id"]]
    assert f"1 recordings could not be copy-synthesised: `{val[0]['id']}`" in comparison_markdown(
        {"overall": {}}, result)

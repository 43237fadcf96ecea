"""`dvc repro` end to end in a temporary git repository: the real DAG, real Prefect, real audio."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.shards import read_jsonl
from tests.helpers import aishell_bv2_list

REPO = Path(__file__).resolve().parents[1]
TINY_SENTENCES = {
    "en": ["Hello there, it is 7 o'clock!", "Is this the train to Leeds?", "I paid $5 for two apples.",
           "The 3rd door on the left.", "Good morning, Dr. Smith.", "Where are you going?"],
    "zh": ["今天是3月15日，天气很好。", "你吃饭了吗？", "这本书卖二十五元。", "我们一起去公园吧！"],
    "ja": ["今日は2時に駅で会いましょう！", "お元気ですか？", "この本は千円です。", "雨が降っています。"],
    "de": ["Ich habe 3 Äpfel gekauft.", "Wie geht es dir?", "Das Wetter ist heute schön.", "Guten Abend!"],
}


def run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_speech) -> Path:
    """A clean clone of the project's pipeline with a tiny demo corpus plus real AISHELL-3 clips."""
    root = tmp_path_factory.mktemp("project")
    for name in ["flows", "tasks", "model"]:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root)
    (root / "demo" / "sentences").mkdir(parents=True)
    for lang, lines in TINY_SENTENCES.items():
        (root / "demo" / "sentences" / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = tmp_path_factory.mktemp("aishell")  # outside the repo, as users' corpora usually are
    aishell_bv2_list(shared_speech, corpus, 4)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["datasets"].append({"name": "aishell", "language": "zh", "path": str(corpus), "format": "bv2_list"})
    params["split"]["min_train_per_speaker"] = 1
    params["split"]["val_per_speaker"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    return root


@pytest.fixture(scope="module")
def first_repro(project) -> str:
    return run(["dvc", "repro"], project)


def test_dvc_repro_runs_every_stage_on_a_clean_clone(project, first_repro):
    for stage in ["demo", "ingest", "text"]:
        assert f"Running stage '{stage}'" in first_repro
    ingest = json.loads((project / "data/ingest/summary.json").read_text())
    text = json.loads((project / "data/text/summary.json").read_text())
    assert ingest["utterances"] == 22 and ingest["rejects"] == 0  # 18 demo clips + 4 AISHELL-3
    assert text["utterances"] == 22 and set(text["by_language"]) == {"en", "zh", "ja", "de"}
    rows = [r for p in sorted((project / "data/text").glob("text-*.jsonl")) for r in read_jsonl(p)]
    assert {r["id"].split("/")[0] for r in rows} >= {"aishell", "demo_de", "demo_ja"}
    symbols = json.loads((project / "data/text/symbols.json").read_text())
    assert symbols["language_ids"] == {"zh": 0, "ja": 1, "en": 2, "de": 3}
    assert symbols["tone_offsets"] == {"zh": 0, "ja": 6, "en": 8, "de": 12} and symbols["num_tones"] == 15
    assert "Prefect" in first_repro or "Flow run" in first_repro  # each stage ran as a Prefect flow
    assert "utterances" in first_repro and "rejects" in first_repro  # and logged its summary


def test_a_second_dvc_repro_runs_nothing(project, first_repro):
    out = run(["dvc", "repro"], project)
    assert "Running stage" not in out
    status = run(["dvc", "status"], project)
    assert "up to date" in status


def test_changing_a_text_param_reruns_text_only(project, first_repro):
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    params["text"]["shard_mb"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    out = run(["dvc", "repro"], project)
    assert "Running stage 'text'" in out and "Running stage 'ingest'" not in out

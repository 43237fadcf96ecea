"""dvc.yaml spells the pipeline's folders; tasks/core/paths.py is their home in the code. They agree."""
from pathlib import Path

import yaml

from tasks.core import paths

REPO = Path(__file__).resolve().parents[1]


def _outs(stage: dict) -> set[str]:
    return {next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots") for o in stage.get(key, [])}


def test_stage_outs_and_commands_use_the_folders_of_tasks_core_paths():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name, folder in [("ingest", paths.INGEST), ("text", paths.TEXT), ("bert", paths.BERT), ("spec", paths.SPEC)]:
        assert _outs(stages[name]) == {folder} and f"--out {folder}" in stages[name]["cmd"]
    assert stages["text"]["cmd"].endswith(f"--in {paths.INGEST} --out {paths.TEXT}")
    assert stages["bert"]["cmd"].endswith(f"--in {paths.TEXT} --out {paths.BERT}")
    assert stages["spec"]["cmd"].endswith(f"--in {paths.INGEST} --out {paths.SPEC}")
    assert _outs(stages["train"]) == {paths.RUN_RECORD}
    assert all(o.startswith(paths.REPORTS + "/") for o in _outs(stages["stats"]))
    assert all(o.startswith(paths.EVAL + "/") for o in _outs(stages["evaluate"]))
    assert f"--run {paths.RUN_RECORD} --out {paths.EVAL}" in stages["evaluate"]["cmd"]
    for name in ("train", "evaluate"):
        assert set(paths.DATA_DIRS.values()) <= set(stages[name]["deps"])
    assert stages["source"]["do"]["outs"] == [paths.SOURCES + "/${item.name}.json"]

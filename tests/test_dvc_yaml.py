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
    assert _outs(stages["export"]) == {paths.EXPORT} and stages["export"]["cmd"].endswith(f"--out {paths.EXPORT}")
    assert {paths.RUN_RECORD, paths.EVAL + "/metrics.json"} <= set(stages["export"]["deps"])
    from tasks.prep.bert import BATCH_POLICY  # the export records it, so a change re-runs the export

    assert {f"features.bert.{k}" for k in BATCH_POLICY} <= set(stages["export"]["params"])
    for name in ("train", "evaluate"):
        assert set(paths.DATA_DIRS.values()) <= set(stages[name]["deps"])
    assert stages["source"]["do"]["outs"] == [paths.SOURCES + "/${item.name}.json"]


# The modules each stage command runs; the frontend registry loads its backends by name, so the
# stages that convert text name them too.
def _stage_modules() -> dict[str, tuple[list[str], list[str]]]:
    from tasks.frontends import G2P_BACKENDS, NORMALIZERS

    frontends = sorted(set(G2P_BACKENDS.values()) | set(NORMALIZERS.values()))
    data_flow = ["flows/stages.py", "flows/fanout.py"]
    return {"demo": (["tasks.prep.demo"], ["flows/stages.py"]),
            "ingest": (["tasks.prep.ingest"], data_flow), "text": (["tasks.prep.text", *frontends], data_flow),
            "bert": (["tasks.prep.bert"], data_flow), "spec": (["tasks.prep.spec"], data_flow),
            "stats": (["tasks.prep.stats"], ["flows/stages.py"]), "train": (["tasks.training.train"], ["flows/train.py"]),
            "waveglow": (["tasks.prep.vocoder", "tasks.training.waveglow", "tasks.training.launch"], data_flow),
            "asr": (["tasks.prep.content", "tasks.prep.vocoder", "tasks.training.asr", "tasks.training.launch"],
                    data_flow),
            "vc": (["tasks.prep.content", "tasks.prep.vocoder", "tasks.training.vc", "tasks.training.launch"], data_flow),
            "evaluate": (["tasks.evaluation.evaluate", "tasks.evaluation.copy_synthesis", *frontends],
                         ["flows/evaluate.py"]),
            "export": (["tasks.orchestration.export", *frontends], ["flows/export.py"])}


def test_each_stage_lists_every_repository_file_its_code_imports_as_a_dvc_dep():
    """So an edit to any of them re-runs the stage (whose cache keys then hash the new code)."""
    from tasks.core.code import ROOT, code_files

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name, (modules, flow_files) in _stage_modules().items():
        deps = [Path(d) for d in stages[name]["deps"]]
        needed = [f.relative_to(ROOT) for f in code_files(*modules)] + [Path(f) for f in flow_files]
        uncovered = [str(f) for f in needed if not any(f == d or d in f.parents for d in deps)]
        assert uncovered == [], (name, uncovered)

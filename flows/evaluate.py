"""Stage `evaluate` as a Prefect flow: evaluate the run record's checkpoint on the val split
(tasks/evaluation/evaluate.py: eval/metrics.json, report.md, samples/, plots/), with the waveglow
stage on judge copy-synthesis of the same recordings beside it (tasks/evaluation/copy_synthesis.py:
eval/copy_synthesis.json, samples/<id>.wg.wav, a report section) and the vc stage on, its
held-out pairs converted and judged (tasks/evaluation/conversion.py: eval/vc.json, samples/vc/, a
report section, the conversion model's own gate), publish the metrics as Prefect
artifacts (the report as markdown, the per-group metrics as a table), then run the promotion gate
on params.storage (models/<model_name>/production.json), production scored on the same utterances
(eval/production.json when it had to be scored again); the decision goes to the log and to
eval/promotion.json."""
from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger

from tasks.core import paths
from tasks.core.config import find_repo_root, load_params, resolve_local
from tasks.core.storage import atomic_write_bytes


def metrics_table(metrics: dict) -> list[dict]:
    """One row per group (overall, each language, each language/speaker) with the headline metrics."""
    from tasks.evaluation.evaluate import HEADLINE

    groups = {"overall": metrics["overall"], **metrics["language"], **metrics["language/speaker"]}
    keys = HEADLINE + list(metrics.get("judges", {}))  # plus the model-based metrics, when configured
    return [{"group": name, "n": g["count"], **{k: g.get(k) for k in keys}} for name, g in groups.items()]


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml", run_record: str = paths.RUN_RECORD,
                  out: str = paths.EVAL) -> dict:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks.evaluation.conversion import judge_beside_voice as judge_conversion_beside_voice
    from tasks.evaluation.copy_synthesis import judge_beside_voice
    from tasks.evaluation.evaluate import evaluate, promote, read_run_record, score_production

    started = time.perf_counter()
    log = get_run_logger()
    path = Path(params_path).resolve()
    params = load_params(path)
    root = find_repo_root(path)
    result = evaluate(params, root, run_record, out, params_path=path)
    metrics = result["metrics"]
    # with the waveglow stage on: the same recordings through WaveGlow, beside the voice
    copy_section = judge_beside_voice(params, root, metrics, [r["id"] for r in result["rows"]], out, params_path=path)
    if copy_section:
        result["markdown"] += copy_section
    # with the vc stage on: its held-out pairs converted and judged, and its own gate
    vc_section = judge_conversion_beside_voice(params, root, out, params_path=path)
    if vc_section:
        result["markdown"] += vc_section
    try:
        production = score_production(params, root, metrics, run_record, params_path=path)
    except Exception as err:  # production's checkpoint is gone or unreadable: the gate says so
        log.warning("production could not be scored on the candidate's utterances: %s", err)
        production = None
    # production's scores on these utterances (null: none needed) and the decision, next to the metrics
    atomic_write_bytes(resolve_local(root, out) / "production.json",
                       (json.dumps(production, indent=2, sort_keys=True, default=str) + "\n").encode())
    decision = promote(params, root, read_run_record(root, run_record), metrics, production_metrics=production)
    atomic_write_bytes(resolve_local(root, out) / "promotion.json",
                       (json.dumps({k: decision.get(k) for k in ("promoted", "reason", "key", "compared")}, indent=2,
                                   sort_keys=True) + "\n").encode())
    verdict = "promoted to production" if decision["promoted"] else "not promoted"
    markdown = result["markdown"] + f"\n**Promotion ({params.eval.promotion.model_name})**: {verdict}: {decision['reason']}\n"
    create_markdown_artifact(markdown=markdown, key="evaluate-report",
                             description=f"evaluate: run {metrics['model']['run_id']} step {metrics['model']['step']}")
    create_table_artifact(table=metrics_table(metrics), key="evaluate-metrics",
                          description=f"evaluate: metrics per language and speaker, {verdict}")
    log.info("evaluate: %d utterances, MCD %s dB, F0 RMSE %s cents, length ratio %s, mel L1 %s, MOS %s, "
             "speaker similarity %s, CER %s (%.1f s)\n%s", metrics["utterances"], metrics["mcd_db"],
             metrics["f0_rmse_cents"], metrics["length_ratio"], metrics["mel_l1"], metrics.get("mos"),
             metrics.get("speaker_similarity"), metrics.get("cer"), time.perf_counter() - started, markdown)
    log.info("promotion of %s: %s: %s", metrics["model"]["checkpoint"], verdict, decision["reason"])
    return {"metrics": {k: metrics.get(k) for k in ("mcd_db", "f0_rmse_cents", "vuv_error", "length_ratio", "mel_l1",
                                                    "mos", "speaker_similarity", "cer", "wer", "utterances")},
            "out_dir": result["out_dir"], "not_computed": result["not_computed"],
            "promotion": {k: decision[k] for k in ("promoted", "reason", "key", "compared")}}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(evaluate_flow(), indent=2))

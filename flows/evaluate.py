"""Stage `evaluate` as a Prefect flow: evaluate the train manifest's checkpoint on the val split
(tasks/evaluate.py: eval/metrics.json, per_utterance.json, report.md, samples/), publish the
metrics table as a Prefect markdown artifact, then run the promotion gate on params.storage
(models/<model_name>/production.json) and log its decision."""
from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger

from tasks.config import find_repo_root, load_params


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml", manifest: str = "train/manifest.json", out: str = "eval") -> dict:
    from prefect.artifacts import create_markdown_artifact

    from tasks.evaluate import evaluate, promote, read_manifest

    started = time.perf_counter()
    log = get_run_logger()
    path = Path(params_path).resolve()
    params = load_params(path)
    root = find_repo_root(path)
    result = evaluate(params, root, manifest, out, params_path=path)
    metrics = result["metrics"]
    decision = promote(params, root, read_manifest(root, manifest), metrics)
    verdict = "promoted to production" if decision["promoted"] else "not promoted"
    markdown = result["markdown"] + f"\n**Promotion ({params.eval.promotion.model_name})**: {verdict}: {decision['reason']}\n"
    create_markdown_artifact(markdown=markdown, key="evaluate-report",
                             description=f"evaluate: run {metrics['model']['run_id']} step {metrics['model']['step']}")
    log.info("evaluate: %d utterances, MCD %s dB, F0 RMSE %s cents, length ratio %s, mel L1 %s (%.1f s)\n%s",
             metrics["utterances"], metrics["mcd_db"], metrics["f0_rmse_cents"], metrics["length_ratio"],
             metrics["mel_l1"], time.perf_counter() - started, markdown)
    log.info("promotion of %s: %s: %s", metrics["model"]["checkpoint"], verdict, decision["reason"])
    return {"metrics": {k: metrics[k] for k in ("mcd_db", "f0_rmse_cents", "vuv_error", "length_ratio", "mel_l1",
                                                "utterances")},
            "out_dir": result["out_dir"], "not_computed": result["not_computed"],
            "promotion": {k: decision[k] for k in ("promoted", "reason", "key")}}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(evaluate_flow(), indent=2))

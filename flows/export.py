"""Stage `export` and `vitsflow export` as a Prefect flow: a checkpoint (by default the one the
evaluate stage judged) exported as the inference bundle and in upstream Bert-VITS2 2.3's format
(tasks/orchestration/export.py); export.json records whether it is production."""
from __future__ import annotations

import json
import time
from typing import Optional

from prefect import flow, get_run_logger

from tasks.core import paths


@flow(name="export")
def export_flow(params_path: str = "params.yaml", model: Optional[str] = None, out: str = paths.EXPORT,
                formats: Optional[list[str]] = None, vocoder: Optional[str] = None, vc: Optional[str] = None) -> dict:
    """vocoder, vc: a WaveGlow, a HiFi-VC to export beside the voice; default (the stage, no
    --model): the waveglow / vc stage's model when params vocoder.enabled / vc.enabled, else none."""
    from pathlib import Path

    from tasks.core.config import find_repo_root, load_params, resolve_local
    from tasks.orchestration.export import export_model, judged_checkpoint

    started = time.perf_counter()
    params = load_params(params_path)
    root = find_repo_root(Path(params_path))
    ref = model if model is not None else judged_checkpoint(root)
    if vocoder is None and model is None and params.vocoder.enabled:
        vocoder = paths.WAVEGLOW_RECORD  # as the stage's dvc.yaml deps name it (export.json records it)
    if vc is None and model is None and params.vc.enabled:
        vc = paths.VC_RECORD
    summary = export_model(ref, resolve_local(root, out) if model is None else Path(out), params_path,
                           formats if formats is not None else (params.export.formats if model is None else None),
                           vocoder=vocoder, vc=vc)
    get_run_logger().info("export of %s to %s (%.1f s):\n%s", summary["checkpoint"], out,
                          time.perf_counter() - started, json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(export_flow(), indent=2))

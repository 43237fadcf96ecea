"""Export of a trained checkpoint: `vitsflow export` and the DVC stage `export`.

    export_model("production", "exports/demo", "params.yaml")             # the production pointer
    export_model("file://storage/runs/<id>/step_00000100", "exports/x")  # a checkpoint bundle
    export_model("file://storage/runs/<id>", ...)                         # a run: its latest bundle
    export_model("train/run.json", ...)                                   # the train stage's record

writes into the output folder:

    model.safetensors, model.onnx, model.ts, config.json   the inference bundle (tasks/inference/export.py)
    waveglow/                                              a WaveGlow beside it, when given (vocode.py)
    hifivc.ts, hifivc.safetensors, hifivc.json             a HiFi-VC beside it, when given (convert.py)
    upstream/G_<step>.pth, upstream/config.json            upstream Bert-VITS2 2.3's own format
    export.json                                            what was exported from where, and whether
                                                           that checkpoint is production

`formats` None: the bundle's three formats, and the upstream format when upstream's code can run
the model (otherwise export.json says why not). An explicit list that names "upstream" requires it:
a model upstream cannot run is then an error. The stage exports the checkpoint `evaluate` judged.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from tasks.core import paths
from tasks.core.config import Params, find_repo_root, load_params, resolve_local
from tasks.core.storage import atomic_write_bytes, storage_from_config
from tasks.evaluation.evaluate import production_key

PathLike = Union[str, os.PathLike]
SUMMARY_NAME = "export.json"
UPSTREAM = "upstream"
PRODUCTION = "production"  # `--model production` (params' model name) or `production:<model_name>`


def formats_of(formats: Optional[Sequence[str]]) -> tuple[tuple[str, ...], str]:
    """(bundle formats, upstream mode: "auto" | "required" | "off") of a --formats list (None: default)."""
    from tasks.inference.export import DEFAULT_FORMATS, FILES, ExportError

    if formats is None:
        return tuple(DEFAULT_FORMATS), "auto"
    wanted = tuple(dict.fromkeys(f.strip() for f in formats if f.strip()))
    unknown = sorted(set(wanted) - set(FILES) - {UPSTREAM})
    if unknown or not wanted:
        raise ExportError(f"formats: expected some of {[*FILES, UPSTREAM]}, got {list(formats)}")
    return tuple(f for f in wanted if f != UPSTREAM), ("required" if UPSTREAM in wanted else "off")


def read_production_pointer(params: Params, root: Path, model_name: Optional[str] = None) -> Optional[dict]:
    """models/<model_name>/production.json on params.storage (default name: eval.promotion.model_name)."""
    storage = storage_from_config(params.storage, root)
    key = production_key(model_name or params.eval.promotion.model_name)
    if not storage.exists(key):
        return None
    return json.loads(storage.read_bytes(key).decode("utf-8"))


def resolve_reference(ref: str, params: Params, root: Path) -> str:
    """A model reference as load_voice takes it: `production[:<name>]` becomes the pointer's checkpoint."""
    from tasks.inference.synth import SynthError

    if ref == PRODUCTION or ref.startswith(PRODUCTION + ":"):
        name = ref.partition(":")[2] or params.eval.promotion.model_name
        pointer = read_production_pointer(params, root, name)
        if pointer is None:
            raise SynthError(f"{ref}: no production model: {production_key(name)} does not exist on "
                             f"{params.storage.uri} (the evaluate stage writes it when a checkpoint is promoted)")
        return pointer["checkpoint"]["uri"]
    return ref


def same_checkpoint(a: Optional[str], b: Optional[str]) -> bool:
    """Two checkpoint URIs name the same bundle (same run id and step, whatever the root's spelling)."""
    from tasks.inference.synth import _checkpoint_location

    la, lb = (_checkpoint_location(x) if x else None for x in (a, b))
    return la is not None and lb is not None and la[1:] == lb[1:]


def export_model(ref: str, out_dir: PathLike, params_path: PathLike = "params.yaml",
                 formats: Optional[Sequence[str]] = None, vocoder: Optional[str] = None,
                 vc: Optional[str] = None) -> dict[str, Any]:
    """Export checkpoint `ref` (module docstring) to out_dir; returns the summary (export.json).
    vocoder: a WaveGlow (any reference tasks.inference.vocode.load_vocoder takes: the waveglow
    stage's record, a bundle, an NVIDIA file) to export beside it in out_dir/waveglow/ (weight norm
    removed: safetensors, TorchScript, ONNX); None removes an earlier export's waveglow/.
    vc: a HiFi-VC (any reference tasks.inference.convert.load_converter takes: the vc stage's
    record, a bundle) to export beside it as out_dir/hifivc.ts (+ .safetensors, .json); None
    removes an earlier export's."""
    from tasks.frontends import backend_info
    from tasks.inference.export import (CONFIG_NAME, FILES, UPSTREAM_DIR, ExportError, export_inference,
                                        export_upstream, upstream_problems)
    from tasks.inference.synth import SynthError, load_voice
    from tasks.prep.bert import BATCH_POLICY

    params_path = Path(params_path)
    params = load_params(params_path)
    root = find_repo_root(params_path)
    bundle_formats, upstream_mode = formats_of(formats)
    resolved = resolve_reference(ref, params, root)
    if "://" not in resolved and not Path(resolved).is_absolute() and not Path(resolved).exists() \
            and (root / resolved).exists():
        resolved = str(root / resolved)  # a run record or bundle path relative to the repo, not the cwd
    voice = load_voice(resolved, params_path)
    vocoder_model = _load_vocoder(vocoder, params_path, root)  # a bad vocoder fails before anything is written
    converter = _load_converter(vc, params_path, root)  # so does a bad conversion model
    if voice.kind != "checkpoint":
        raise SynthError(f"{ref}: an export folder is exported already; export from a checkpoint bundle, a run, "
                         "a run record or the production pointer")
    info = voice.info
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frontends = info.get("frontends") or {c: backend_info(l.g2p)[1] for c, l in voice.languages.items()}
    audio = dict(vars(voice.stft))
    lineage = {"run_id": info["run_id"], "step": info["step"], "checkpoint": info["checkpoint"]}
    problems = upstream_problems(voice.generator, voice.symbols)
    if upstream_mode == "required" and problems:
        raise ExportError("cannot export in upstream Bert-VITS2 2.3 format: " + "; ".join(problems))
    if bundle_formats:
        export_inference(voice.generator, out, voice.symbols, voice.languages, frontends, audio, info["model"],
                         voice.speakers, lineage, formats=bundle_formats,
                         bert_batch={k: getattr(voice.bert_stage, k) for k in BATCH_POLICY})
    else:  # only the upstream format: no bundle files of an earlier export stay behind
        for name in [*FILES.values(), CONFIG_NAME]:
            (out / name).unlink(missing_ok=True)
    upstream: dict[str, Any]
    if upstream_mode != "off" and not problems:
        written = export_upstream(voice.generator, out / UPSTREAM_DIR, voice.symbols, voice.speakers, audio,
                                  info["step"], add_blank=voice.add_blank)
        upstream = {"written": True, "folder": UPSTREAM_DIR, **written}
    else:
        shutil.rmtree(out / UPSTREAM_DIR, ignore_errors=True)
        upstream = {"written": False, "reasons": problems if upstream_mode == "auto" else ["not requested"]}
    vocoder_summary = _export_vocoder(vocoder, vocoder_model, out)
    vc_summary = _export_vc(vc, converter, out)
    pointer = read_production_pointer(params, root)
    summary = {"model": ref, "checkpoint": info["checkpoint"], "run_id": info["run_id"], "step": info["step"],
               "variant": info.get("variant"), "formats": list(bundle_formats), "upstream": upstream,
               "production": {"model_name": params.eval.promotion.model_name,
                              "is_production": bool(pointer) and same_checkpoint(pointer["checkpoint"]["uri"],
                                                                                 info["checkpoint"]),
                              "pointer_checkpoint": pointer["checkpoint"]["uri"] if pointer else None},
               "vocoder": vocoder_summary, "vc": vc_summary}
    atomic_write_bytes(out / SUMMARY_NAME, (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode())
    return summary


def _load_vocoder(ref: Optional[str], params_path: Path, root: Path):
    from tasks.inference.vocode import load_vocoder

    return None if ref is None else load_vocoder(_local_ref(ref, root), params_path)


def _local_ref(ref: str, root: Path) -> str:
    if "://" not in ref and not Path(ref).is_absolute() and not Path(ref).exists() and (root / ref).exists():
        return str(root / ref)  # a record or file relative to the repo, not the cwd (as for the voice)
    return ref


def _load_converter(ref: Optional[str], params_path: Path, root: Path):
    from tasks.inference.convert import load_converter

    return None if ref is None else load_converter(_local_ref(ref, root), params_path)


def _export_vc(ref: Optional[str], converter, out: Path) -> Optional[dict[str, Any]]:
    from tasks.inference.convert import EXPORT_TS, export_hifivc, remove_export

    if converter is None:
        remove_export(out)
        return None
    config = export_hifivc(converter, out)
    return {"model": ref, "file": EXPORT_TS, "run_id": config.get("run_id"), "step": config.get("step"),
            "checkpoint": config.get("checkpoint"), "parity": config["parity"], "onnx": config["onnx"]}


def _export_vocoder(ref: Optional[str], vocoder, out: Path) -> Optional[dict[str, Any]]:
    from tasks.inference.vocode import EXPORT_DIR, export_waveglow

    if vocoder is None:
        shutil.rmtree(out / EXPORT_DIR, ignore_errors=True)
        return None
    config = export_waveglow(vocoder, out)
    return {"model": ref, "folder": EXPORT_DIR, "run_id": config.get("run_id"), "step": config.get("step"),
            "checkpoint": config.get("checkpoint"), "formats": sorted(config["files"]),
            "sample_rate": config["sample_rate"]}


def judged_checkpoint(root: Path, eval_dir: PathLike = paths.EVAL, run_record: PathLike = paths.RUN_RECORD) -> str:
    """The checkpoint the evaluate stage judged (eval/metrics.json model.checkpoint), else the
    train stage's (train/run.json checkpoint.uri)."""
    metrics = resolve_local(root, os.fspath(eval_dir)) / "metrics.json"
    if metrics.is_file():
        uri = (json.loads(metrics.read_text(encoding="utf-8")).get("model") or {}).get("checkpoint")
        if uri:
            return uri
    record = resolve_local(root, os.fspath(run_record))
    if not record.is_file():
        raise FileNotFoundError(f"neither {metrics} nor {record} exists: run the train and evaluate stages first")
    return json.loads(record.read_text(encoding="utf-8"))["checkpoint"]["uri"]


def export_stage(params_path: PathLike = "params.yaml", out: PathLike = paths.EXPORT) -> dict[str, Any]:
    """Stage `export`: the checkpoint evaluate judged, in params.export.formats, to `out`."""
    params_path = Path(params_path)
    params = load_params(params_path)
    root = find_repo_root(params_path)
    return export_model(judged_checkpoint(root), resolve_local(root, os.fspath(out)), params_path,
                        params.export.formats)


__all__ = ["PRODUCTION", "SUMMARY_NAME", "export_model", "export_stage", "formats_of", "judged_checkpoint",
           "read_production_pointer", "resolve_reference", "same_checkpoint"]

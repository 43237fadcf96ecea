"""Copy-synthesis through WaveGlow: what a mel vocoder reaches on this corpus.

Each val recording (the utterances `evaluate` judges the voice on) goes recording -> its own log
mel -> WaveGlow (params vocoder.infer_sigma, seed eval.seed) -> NVIDIA's denoiser
(vocoder.denoise) -> back at the recording's rate, and is judged against the recording by the same
metrics and judges as the voice (MCD, F0 RMSE, V/UV, length ratio; MOS, speaker similarity,
CER/WER). The voice must also predict the mel; copy-synthesis is given the true one, so its
scores are the ceiling of a mel-vocoder pipeline on this data, next to the end-to-end voice's.

Writes eval/copy_synthesis.json (overall, per language and speaker, per utterance) and
eval/samples/<id>.wg.wav beside the voice's samples; the eval report gets a comparison table.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tasks.core import paths
from tasks.core.config import Params, resolve_local
from tasks.core.storage import atomic_write_bytes

logger = logging.getLogger("vitsflow.evaluate")

RESULT_NAME = "copy_synthesis.json"
SAMPLE_SUFFIX = ".wg.wav"
COMPARED = [("mos", "MOS", 2), ("speaker_similarity", "speaker sim.", 3), ("cer", "CER", 3), ("wer", "WER", 3),
            ("mcd_db", "MCD (dB)", 2), ("f0_rmse_cents", "F0 RMSE (cents)", 1), ("vuv_error", "V/UV error", 3)]


def waveglow_record(root: Path, record_path: str = paths.WAVEGLOW_RECORD) -> Optional[dict]:
    """The waveglow stage's run record when the stage ran with the vocoder on; else None."""
    from tasks.core.checkpoints import stage_record_if_on
    from tasks.inference.vocode import read_record

    return stage_record_if_on(resolve_local(root, record_path), read_record)


def copy_synthesis(params: Params, root: Path, vocoder_ref: str, out_dir: str = paths.EVAL,
                   params_path: Optional[Path] = None, device: str = "cpu", write: bool = True,
                   ids: Optional[list[str]] = None) -> dict[str, Any]:
    """Judge copy-synthesis of the val split (or of the utterances `ids`: the voice's, so both
    are judged on the same recordings) through the vocoder `vocoder_ref` (module docstring)."""
    from tasks.core.shards import read_pcm
    from tasks.evaluation.evaluate import _finite, _safe_name
    from tasks.evaluation.judges import Judges
    from tasks.evaluation.metrics import aggregate, utterance_metrics
    from tasks.inference.vocode import VocodeError, load_vocoder
    from tasks.prep.audio import resample, wav_bytes
    from tasks.prep.ingest import read_index

    cfg, v = params.eval, params.vocoder
    ingest_dir = resolve_local(root, paths.INGEST)
    val = [r for r in read_index(ingest_dir) if r["split"] == "val"]
    if ids is not None:
        by_id = {r["id"]: r for r in val}
        val = [by_id[i] for i in ids if i in by_id]
    val = val[: cfg.max_utterances]
    if not val:
        raise ValueError("the val split is empty: nothing to copy-synthesise (params split.val_per_speaker)")
    vocoder = load_vocoder(vocoder_ref, params_path or root / "params.yaml", device)
    judges = Judges(cfg.models, root, device) if any(cfg.models.model_dump().values()) else None
    ref_sr = params.audio.sample_rate
    out = resolve_local(root, out_dir)
    texts = normalised_texts(root)  # what the voice's judges transcribe against
    rows, failed = [], []
    for i, meta in enumerate(val):
        ref = read_pcm(ingest_dir, meta).astype(np.float32) / 32768.0
        try:
            wav = vocoder.copy_synthesis(ref, ref_sr, v.infer_sigma, v.denoise, seed=cfg.seed, name=meta["id"])
        except VocodeError as err:  # a clip too short for the vocoder's mel (the waveglow stage's reject): it alone
            logger.warning("copy-synthesis %s: %s", meta["id"], err)
            failed.append({"id": meta["id"], "language": meta["language"], "speaker": meta["speaker"], "error": str(err)})
            continue
        syn = resample(wav, vocoder.sample_rate, ref_sr)
        m = utterance_metrics(ref, syn, ref_sr, f0_method=cfg.f0_method)
        row = {"id": meta["id"], "language": meta["language"], "speaker": meta["speaker"],
               **{k: _finite(x) for k, x in m.items()}, "voiced_pairs": int(m["voiced_pairs"])}
        if judges is not None:
            row.update({k: x if isinstance(x, str) else _finite(x)
                        for k, x in judges.score(ref, syn, ref_sr, texts.get(meta["id"]) or meta["text"],
                                                     meta["language"]).items()})
        rows.append(row)
        if write and i < cfg.samples:
            atomic_write_bytes(out / "samples" / f"{_safe_name(meta['id'])}{SAMPLE_SUFFIX}", wav_bytes(syn, ref_sr))
        logger.info("copy-synthesis %s: MCD %.2f dB, MOS %s", meta["id"], row["mcd_db"] or float("nan"), row.get("mos"))
    if not rows:
        raise ValueError(f"no val utterance could be copy-synthesised: {failed}")
    groups = aggregate(rows, by=("language", "speaker"))
    result = {"enabled": True, "vocoder": {"reference": vocoder_ref, **{k: vocoder.info.get(k) for k in ("run_id", "step", "checkpoint")}},
              "settings": {"sigma": v.infer_sigma, "denoise": v.denoise, "seed": cfg.seed, "f0_method": cfg.f0_method,
                           "sample_rate": vocoder.sample_rate},
              "utterances": len(rows), "eval_set": hashlib.sha256("\n".join(r["id"] for r in rows).encode()).hexdigest()[:16],
              "judges": judges.described() if judges is not None else {}, **groups, "rows": rows, "failed": failed}
    if write:
        atomic_write_bytes(out / RESULT_NAME, (json.dumps(result, indent=2, sort_keys=True, default=str) + "\n").encode())
    return result


def normalised_texts(root: Path) -> dict[str, str]:
    """id -> the text stage's normalised text (the ASR judge's reference, as for the voice)."""
    from tasks.core.shards import read_jsonl

    index = resolve_local(root, paths.TEXT) / "index.jsonl"
    if not index.is_file():
        return {}
    return {r["id"]: r["norm_text"] for r in read_jsonl(index) if r.get("norm_text")}


def judge_beside_voice(params: Params, root: Path, voice_metrics: dict, ids: list[str], out_dir: str = paths.EVAL,
                       params_path: Optional[Path] = None, device: str = "cpu") -> Optional[str]:
    """The evaluate stage's step: with the waveglow stage on, copy-synthesis of the voice's
    utterances and the report section comparing them (appended to report.md); with it off,
    copy_synthesis.json says so ({"enabled": false}: a DVC out exists either way) and None is
    returned."""
    out = resolve_local(root, out_dir)
    record = waveglow_record(root) if params.vocoder.enabled else None
    if record is None:
        reason = ("params vocoder.enabled is false" if not params.vocoder.enabled else
                  f"{paths.WAVEGLOW_RECORD} is missing or says the stage was off: run the waveglow stage")
        off = {"enabled": False, "reason": reason}
        atomic_write_bytes(out / RESULT_NAME, (json.dumps(off, indent=2, sort_keys=True) + "\n").encode())
        return None
    copy = copy_synthesis(params, root, str(resolve_local(root, paths.WAVEGLOW_RECORD)), out_dir, params_path,
                          device, ids=ids)
    section = comparison_markdown(voice_metrics, copy)
    report = out / "report.md"
    atomic_write_bytes(report, (report.read_text(encoding="utf-8") if report.is_file() else "").encode()
                       + section.encode())
    return section


def comparison_markdown(voice: dict, copy: dict) -> str:
    """The voice's overall scores beside copy-synthesis's and the recordings' (the report's section)."""
    def fmt(x: Any, d: int) -> str:
        return "–" if x is None else f"{x:.{d}f}"

    rec = {"mos": copy["overall"].get("mos_reference"), "speaker_similarity": 1.0, "mcd_db": 0.0,
           "f0_rmse_cents": 0.0, "vuv_error": 0.0}
    lines = ["\n## Copy-synthesis through WaveGlow: the ceiling of a mel vocoder\n\n",
             f"The {copy['utterances']} val recordings through their own mels and WaveGlow run "
             f"`{copy['vocoder'].get('run_id')}` step {copy['vocoder'].get('step')} (sigma {copy['settings']['sigma']}, "
             f"denoise {copy['settings']['denoise']}), judged like the voice. The voice predicts its mel, copy-synthesis "
             "is given the true one.\n\n",
             "| | " + " | ".join(name for _, name, _ in COMPARED) + " |\n|---|" + "---|" * len(COMPARED) + "\n"]
    for name, scores in (("voice (end-to-end)", voice["overall"]), ("WaveGlow copy-synthesis", copy["overall"]),
                         ("recordings", rec)):
        lines.append(f"| {name} | " + " | ".join(fmt(scores.get(k), d) for k, _, d in COMPARED) + " |\n")
    if copy.get("failed"):
        lines.append(f"\n- {len(copy['failed'])} recordings could not be copy-synthesised: "
                     + "; ".join(f"`{f['id']}`: {f['error']}" for f in copy["failed"]) + "\n")
    return "".join(lines)


__all__ = ["RESULT_NAME", "SAMPLE_SUFFIX", "comparison_markdown", "copy_synthesis", "judge_beside_voice",
           "normalised_texts", "waveglow_record"]

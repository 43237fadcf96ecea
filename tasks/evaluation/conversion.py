"""Held-out any-to-any conversion (params `vc.eval`) and the conversion model's promotion gate: the
evaluate stage's steps when the vc stage is on.

    result = judge_conversion(params, root)                     # eval/vc.json, samples/vc/, a report section
    decision = promote_vc(params, root, vc_record, result)      # models/<name>-vc/production.json

Per pair (a source and a reference recording of speakers the vc stage did not train on), the
source converted to the reference's voice (tasks/inference/convert.py, pitch `match`) and judged:
- `sim_reference`, `sim_source`: GE2E cosine (the project's speaker judge, eval.models.speaker)
  of the output to the reference and to the source; `closer` when the first is higher; and
  `sim_source_reference`, how alike the two speakers were to begin with. The headline is the
  win rate, the share of pairs `closer` (the goal: >= 0.75, crossing gender too), and the margin
  `sim_reference - sim_source`.
- `f0_corr`: Pearson correlation of the output's log-F0 with the source's over frames voiced in
  both (the project's F0 extractor, eval.f0_method): the intonation kept.
- `cer`, `wer` (English, eval.models.asr) and `per` (any language in `languages`, judges.PhoneRecogniser)
  against the source's transcript `text`; `per_source`: the recogniser on the source itself, the
  floor the conversion is measured against (an in-domain recogniser of a small corpus is weak).
- `mos`: the MOS judge's prediction of the output.
- `cross_gender`: the median F0 of source and reference on either side of 165 Hz (no labels for
  the held-out speakers; the usual split of adult male and female speaking F0).
A pair that cannot be converted or judged goes to `failed` with its reason; the others are judged.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tasks.core import paths
from tasks.core.config import Params, resolve_local
from tasks.core.storage import atomic_write_bytes, storage_from_config

logger = logging.getLogger("vitsflow.evaluate")

RESULT_NAME = "vc.json"
SAMPLE_DIR = "samples/vc"
GENDER_SPLIT_HZ = 165.0
SUMMARY = [("win_rate", "win rate (closer to reference)", 2), ("sim_reference", "sim. to reference", 3),
           ("sim_source", "sim. to source", 3), ("margin", "margin", 3), ("sim_source_reference", "sim. source-reference", 3),
           ("f0_corr", "F0 corr.", 3), ("per", "PER", 3), ("per_source", "PER of the source", 3), ("cer", "CER", 3),
           ("wer", "WER", 3), ("mos", "MOS", 2)]


def reference_phones(params: Params, root: Path, text: str, language: str) -> list[str]:
    """The transcript's phones by the text stage's frontend for `language`."""
    from tasks.prep.text import g2p_json

    return g2p_json(params, root, language, text)["phones"]


def f0_correlation(source: np.ndarray, output: np.ndarray, sr: int, method: str = "pyin") -> Optional[float]:
    """Pearson correlation of log-F0 over the frames voiced in both (None under 10 such frames)."""
    from tasks.evaluation.metrics import f0_contour

    n = min(len(source), len(output))
    f_a, v_a = f0_contour(source[:n], sr, method=method)
    f_b, v_b = f0_contour(output[:n], sr, method=method)
    m = min(len(f_a), len(f_b))
    both = v_a[:m] & v_b[:m]
    if both.sum() < 10:
        return None
    a, b = np.log(f_a[:m][both]), np.log(f_b[:m][both])
    if a.std() < 1e-6 or b.std() < 1e-6:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def median_f0(wav: np.ndarray, sr: int, method: str = "pyin") -> Optional[float]:
    from tasks.evaluation.metrics import f0_contour

    f0, voiced = f0_contour(wav, sr, method=method)
    return float(np.median(f0[voiced])) if voiced.any() else None


def vc_record(root: Path, record_path: str = paths.VC_RECORD) -> Optional[dict]:
    """The vc stage's run record when the stage ran with vc on; else None."""
    from tasks.core.checkpoints import stage_record_if_on
    from tasks.inference.convert import read_record

    return stage_record_if_on(resolve_local(root, record_path), read_record)


def pair_name(i: int, pair) -> str:
    return pair.name or f"{i:02d}_{Path(pair.source).stem}~{Path(pair.reference).stem}"


def scoring_key(params: Params, recogniser: Optional[dict] = None) -> str:
    """What decides the scores besides the model: the pairs, the judges (the PER recogniser's run
    and step among them) and this code."""
    from tasks.core.code import code_hash

    what = {"pairs": [p.model_dump() for p in params.vc.eval], "models": params.eval.models.model_dump(),
            "f0_method": params.eval.f0_method, "recogniser": recogniser, "code": code_hash(__name__)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def judge_pair_row(pair, name: str, src: np.ndarray, src_sr: int, ref: np.ndarray, ref_sr: int, wav: np.ndarray,
                   report: dict[str, Any], sr: int, params: Params, root: Path, judges, recogniser) -> dict[str, Any]:
    """One converted pair's metrics (module docstring)."""
    from tasks.evaluation.judges import cosine, error_rates
    from tasks.prep.audio import resample

    cfg = params.eval
    speaker = judges.models.get("speaker") if judges is not None else None
    src24, ref24 = resample(src, src_sr, sr), resample(ref, ref_sr, sr)
    row: dict[str, Any] = {"name": name, "source": pair.source, "reference": pair.reference,
                           "language": pair.language, "seconds": report["seconds"]}
    if speaker is not None:
        e_out, e_src, e_ref = speaker.embed(wav, sr), speaker.embed(src24, sr), speaker.embed(ref24, sr)
        row.update(sim_reference=cosine(e_out, e_ref), sim_source=cosine(e_out, e_src),
                   sim_source_reference=cosine(e_src, e_ref))
        row["margin"] = row["sim_reference"] - row["sim_source"]
        row["closer"] = row["margin"] > 0
    row["f0_corr"] = f0_correlation(src24, wav, sr, cfg.f0_method)
    f_src, f_ref = median_f0(src24, sr, cfg.f0_method), median_f0(ref24, sr, cfg.f0_method)
    row.update(source_f0_hz=f_src, reference_f0_hz=f_ref,
               cross_gender=None if f_src is None or f_ref is None else
               (f_src < GENDER_SPLIT_HZ) != (f_ref < GENDER_SPLIT_HZ))
    if judges is not None and "mos" in judges.models:
        row["mos"] = judges.models["mos"].mos(wav, sr)
    if pair.text and pair.language and judges is not None and judges.asr_supports(pair.language):
        row["transcript"] = judges.models["asr"].transcribe(wav, sr)
        row.update(error_rates(pair.text, row["transcript"]))
    if pair.text and pair.language and recogniser is not None and pair.language in params.languages:
        target = reference_phones(params, root, pair.text, pair.language)
        row["per"], row["per_source"] = recogniser.per(wav, sr, target), recogniser.per(src, src_sr, target)
    return row


def judge_conversion(params: Params, root: Path, model_ref: Optional[str] = None, out_dir: str = paths.EVAL,
                     params_path: Optional[Path] = None, device: str = "cpu", write: bool = True) -> dict[str, Any]:
    """Convert and judge every `vc.eval` pair with the vc stage's model (or `model_ref`)."""
    from tasks.evaluation.evaluate import _finite
    from tasks.evaluation.judges import Judges, PhoneRecogniser
    from tasks.evaluation.metrics import _is_number
    from tasks.inference.convert import ConvertError, load_converter
    from tasks.prep.audio import AudioError, decode, wav_bytes

    cfg = params.eval
    converter = load_converter(model_ref or str(resolve_local(root, paths.VC_RECORD)),
                               params_path or root / "params.yaml", device)
    judges = Judges(cfg.models, root, device) if any(cfg.models.model_dump().values()) else None
    recogniser = PhoneRecogniser.load(root, params, device=device)
    out = resolve_local(root, out_dir)
    if write and (out / SAMPLE_DIR).is_dir():
        for old in (out / SAMPLE_DIR).glob("*.wav"):  # an earlier evaluation's pairs
            old.unlink()
    sr = converter.sample_rate
    rows, failed = [], []
    for i, pair in enumerate(params.vc.eval):
        name = pair_name(i, pair)
        try:
            audio = {}
            for key in ("source", "reference"):
                path = resolve_local(root, getattr(pair, key))
                try:
                    audio[key] = decode(path.read_bytes(), path.name)
                except (OSError, AudioError) as err:
                    raise ConvertError(f"vc.eval[{i}].{key} {getattr(pair, key)}: {err}") from None
            (src, src_sr), (ref, ref_sr) = audio["source"], audio["reference"]
            wav, report = converter.convert(src, src_sr, ref, ref_sr, "match", pair.source, pair.reference)
            row = judge_pair_row(pair, name, src, src_sr, ref, ref_sr, wav, report, sr, params, root, judges,
                                 recogniser)
        except Exception as err:  # one pair that cannot be converted or judged must not stop the others
            logger.warning("vc pair %s: %s", name, err)
            failed.append({"name": name, "error": str(err) if isinstance(err, ConvertError) else
                           f"{type(err).__name__}: {err}"})
            continue
        rows.append({k: (_finite(v) if _is_number(v) and not isinstance(v, bool) else v) for k, v in row.items()})
        if write and len(rows) <= cfg.samples:
            atomic_write_bytes(out / SAMPLE_DIR / f"{name}.wav", wav_bytes(wav, sr))
        logger.info("vc pair %s: sim ref %s, sim src %s, F0 corr %s, PER %s", name, row.get("sim_reference"),
                    row.get("sim_source"), row["f0_corr"], row.get("per"))
    result = {"enabled": True, "model": {k: converter.info.get(k) for k in ("run_id", "step", "checkpoint")},
              "pairs": len(rows), "failed": failed, "overall": summarise(rows),
              "cross_gender": summarise([r for r in rows if r.get("cross_gender")]),
              "same_gender": summarise([r for r in rows if r.get("cross_gender") is False]),
              "eval_set": hashlib.sha256("\n".join(r["name"] for r in rows).encode()).hexdigest()[:16],
              "scoring": scoring_key(params, recogniser.info if recogniser is not None else None),
              "judges": judges.described() if judges is not None else {},
              "recogniser": recogniser.info if recogniser is not None else None, "rows": rows}
    if write:
        atomic_write_bytes(out / RESULT_NAME, (json.dumps(result, indent=2, sort_keys=True, default=str) + "\n").encode())
    return result


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of the numeric metrics over `rows` (absent ones skipped), the win rate, the count."""
    out: dict[str, Any] = {"count": len(rows)}
    closer = [r["closer"] for r in rows if r.get("closer") is not None]
    out["win_rate"] = sum(closer) / len(closer) if closer else None
    for key, _, _ in SUMMARY[1:]:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        out[key] = float(np.mean(values)) if values else None
    return out


def markdown_section(result: dict[str, Any], decision: Optional[dict] = None) -> str:
    """The eval report's section: overall, crossing gender, same gender; the gate's decision."""
    def fmt(x: Any, d: int) -> str:
        return "–" if x is None else f"{x:.{d}f}"

    groups = [("all pairs", result["overall"]), ("crossing gender", result["cross_gender"]),
              ("same gender", result["same_gender"])]
    lines = ["", "## Any-to-any conversion on held-out speakers (HiFi-VC)", "",
             f"Model {result['model'].get('run_id')} step {result['model'].get('step')}; {result['pairs']} pairs judged"
             f", {len(result['failed'])} failed (eval/vc.json). Goal: output closer to the reference than to the "
             "source on >= 75% of pairs.", "",
             "| | n | " + " | ".join(label for _, label, _ in SUMMARY) + " |",
             "|---|---|" + "---|" * len(SUMMARY)]
    for name, g in groups:
        lines.append(f"| {name} | {g['count']} | " + " | ".join(fmt(g.get(k), d) for k, _, d in SUMMARY) + " |")
    for f in result["failed"]:
        lines.append(f"\n- failed: {f['name']}: {f['error']}")
    if decision is not None:
        lines += ["", f"**Promotion ({decision.get('key')})**: "
                      f"{'promoted' if decision['promoted'] else 'not promoted'}: {decision['reason']}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the gate


def vc_production_key(params: Params) -> str:
    from tasks.evaluation.evaluate import production_key

    return production_key(f"{params.eval.promotion.model_name}-vc")


def promote_vc(params: Params, root: Path, record: dict, result: dict[str, Any],
               now: Optional[_dt.datetime] = None) -> dict[str, Any]:
    """The candidate replaces production when its win rate reaches vc.promotion.min_win_rate and,
    against a production pointer, its margin is higher by min_margin_improvement and its PER not
    worse by more than max_per_regression (where both have one). Production's scores are its
    recorded ones; when they are on other pairs or by another scoring the reason says so."""
    cfg = params.vc.promotion
    storage = storage_from_config(params.storage, root)
    key = vc_production_key(params)
    production = json.loads(storage.read_bytes(key).decode("utf-8")) if storage.exists(key) else None
    uri = record["checkpoint"]["uri"]
    o = result["overall"]
    if production is not None and production.get("checkpoint", {}).get("uri") == uri:
        return {"promoted": False, "key": key, "reason": f"{uri} is already production"}
    ok, reason = _decide(cfg, o, production)
    if production is not None and (production.get("eval_set"), production.get("scoring")) != \
            (result["eval_set"], result["scoring"]):
        reason += " [production's recorded scores are on other pairs or by another scoring: not like with like]"
    if not ok:
        return {"promoted": False, "key": key, "reason": reason}
    pointer = {"model_name": f"{params.eval.promotion.model_name}-vc", "run_id": record.get("run_id"),
               "checkpoint": {"uri": uri, "step": record["checkpoint"].get("step")},
               "metrics": {k: o.get(k) for k, _, _ in SUMMARY} | {"pairs": result["pairs"]},
               "eval_set": result["eval_set"], "scoring": result["scoring"], "lineage": record.get("lineage") or {},
               "promoted_at": (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds"),
               "reason": reason,
               "previous": None if production is None else {"checkpoint": production.get("checkpoint"),
                                                            "promoted_at": production.get("promoted_at")}}
    storage.write_bytes(key, (json.dumps(pointer, indent=2, sort_keys=True) + "\n").encode())
    logger.info("promoted %s to %s: %s", uri, storage.describe(key), reason)
    return {"promoted": True, "key": key, "reason": reason, "pointer": pointer}


def _decide(cfg, o: dict[str, Any], production: Optional[dict]) -> tuple[bool, str]:
    win = o.get("win_rate")
    if win is None:
        return False, "no pair has a speaker similarity (eval.models.speaker off, or every pair failed)"
    if win < cfg.min_win_rate:
        return False, f"win rate {win:.2f} is below vc.promotion.min_win_rate {cfg.min_win_rate:g}"
    passed = [f"win rate {win:.2f} >= {cfg.min_win_rate:g}"]
    if production is None:
        return True, "; ".join(["no production conversion model yet"] + passed)
    p = production.get("metrics") or {}
    if p.get("margin") is not None:
        gain = o["margin"] - p["margin"]
        if gain < cfg.min_margin_improvement:
            return False, (f"margin {o['margin']:.3f} vs production {p['margin']:.3f}: improvement {gain:.3f} is below "
                           f"vc.promotion.min_margin_improvement {cfg.min_margin_improvement:g}")
        passed.append(f"margin {o['margin']:.3f} vs {p['margin']:.3f}")
    if p.get("per") is not None and o.get("per") is not None:
        if o["per"] - p["per"] > cfg.max_per_regression:
            return False, (f"PER {o['per']:.3f} vs production {p['per']:.3f}: regression exceeds "
                           f"vc.promotion.max_per_regression {cfg.max_per_regression:g}")
        passed.append(f"PER {o['per']:.3f} vs {p['per']:.3f}")
    return True, "; ".join(passed)


def judge_beside_voice(params: Params, root: Path, out_dir: str = paths.EVAL, params_path: Optional[Path] = None,
                       device: str = "cpu") -> Optional[str]:
    """The evaluate stage's step: with the vc stage on and `vc.eval` pairs, judge them, run the
    gate and append the section to report.md (returned); otherwise, or when the model cannot be
    loaded, eval/vc.json says why not (a DVC out exists either way) and None is returned."""
    out = resolve_local(root, out_dir)
    record = vc_record(root) if params.vc.enabled else None
    reason = ("params vc.enabled is false" if not params.vc.enabled else
              f"{paths.VC_RECORD} is missing or says the stage was off: run the vc stage" if record is None else
              "params vc.eval lists no held-out pairs" if not params.vc.eval else None)
    if reason:
        atomic_write_bytes(out / RESULT_NAME, (json.dumps({"enabled": False, "reason": reason}, indent=2) + "\n").encode())
        return None
    try:
        result = judge_conversion(params, root, None, out_dir, params_path, device, write=True)
    except Exception as err:  # the conversion model cannot be loaded: the voice's evaluation goes on
        logger.warning("held-out conversion not judged: %s", err)
        off = {"enabled": False, "reason": f"the vc model cannot be judged: {type(err).__name__}: {err}"}
        atomic_write_bytes(out / RESULT_NAME, (json.dumps(off, indent=2) + "\n").encode())
        return None
    decision = promote_vc(params, root, record, result)
    result["promotion"] = decision | {"pointer": None}
    atomic_write_bytes(out / RESULT_NAME, (json.dumps(result, indent=2, sort_keys=True, default=str) + "\n").encode())
    section = markdown_section(result, decision)
    report = out / "report.md"
    atomic_write_bytes(report, (report.read_text(encoding="utf-8") if report.is_file() else "").encode()
                       + section.encode())
    return section


__all__ = ["RESULT_NAME", "f0_correlation", "judge_beside_voice", "judge_conversion", "markdown_section",
           "promote_vc", "summarise", "vc_production_key", "vc_record"]

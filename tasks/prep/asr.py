"""Speech recognition for the pipeline: the evaluation's ASR judge (CER/WER of a synthesis) and the
`transcribe` stage (a dataset list from clips) use the same models.

    PocketSphinx()        CMU PocketSphinx 5, the US-English acoustic model, language model and
                          dictionary in its wheel (offline); words + mean word posterior
    HfAsr(path, device)   any transformers speech-recognition pipeline (CTC such as wav2vec2, or
                          Whisper) from a local folder or a Hugging Face id; no confidence

Both take float audio at any rate and resample it to their own.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

JUDGE_RATE = 16000  # the bundled models' rate


def resampled(wav: np.ndarray, sr: int, rate: int) -> np.ndarray:
    from tasks.prep.audio import resample

    return resample(np.asarray(wav, np.float32), sr, rate)


def is_english(language: str) -> bool:
    return language == "en" or language.startswith("en-")


class PocketSphinx:
    """CMU PocketSphinx 5 with the US-English acoustic model, language model and dictionary in its
    wheel. `transcribe` gives the words and their mean posterior probability (0..1)."""

    languages = "en"

    def __init__(self):
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=JUDGE_RATE, loglevel="FATAL")

    def transcribe_with_confidence(self, wav: np.ndarray, sr: int) -> tuple[str, Optional[float]]:
        pcm = (np.clip(resampled(wav, sr, JUDGE_RATE), -1.0, 1.0) * 32767).astype(np.int16).tobytes()
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
        return self.pipe({"raw": resampled(wav, sr, rate), "sampling_rate": rate})["text"]

    def transcribe_with_confidence(self, wav: np.ndarray, sr: int) -> tuple[str, Optional[float]]:
        return self.transcribe(wav, sr), None  # the pipeline gives no confidence

    def supports(self, language: str) -> bool:
        return True


def load_asr(name: Optional[str], language: str, device: str = "cpu", path: Optional[str] = None):
    """`name` "pocketsphinx" (English only) or a transformers model at `path` (resolved by the caller)."""
    if name == "pocketsphinx":
        if not is_english(language):
            raise ValueError(f"pocketsphinx recognises English only, not {language!r}: name a transformers model")
        return PocketSphinx()
    return HfAsr(path or name, device)


def transcribe_clips(clips: list[tuple[str, np.ndarray, int]], asr, language: str, speaker: str,
                     min_confidence: float = 0.0) -> tuple[list[dict], list[dict]]:
    """(rows, review): one jsonl row {audio, speaker, language, text, confidence} per clip the model
    is sure about; the others (an empty transcript, or a confidence below `min_confidence` where
    the model gives one) go to `review` with the reason. `clips`: (audio path, samples, rate)."""
    rows, review = [], []
    for audio, wav, sr in clips:
        text, confidence = asr.transcribe_with_confidence(wav, sr)
        text = " ".join(text.split())
        row = {"audio": audio, "speaker": speaker, "language": language, "text": text,
               "confidence": None if confidence is None else round(confidence, 4)}
        if not text:
            review.append({**row, "reason": "empty transcript"})
        elif confidence is not None and confidence < min_confidence:
            review.append({**row, "reason": f"confidence {confidence:.3f} below min_confidence {min_confidence:g}"})
        else:
            rows.append(row)
    return rows, review


def bv2_line(row: dict) -> str:
    """An upstream Bert-VITS2 list line: wav|speaker|LANGUAGE|text."""
    return f"{row['audio']}|{row['speaker']}|{row['language'].upper()}|{row['text']}"


__all__ = ["HfAsr", "JUDGE_RATE", "PocketSphinx", "bv2_line", "is_english", "load_asr", "resampled", "transcribe_clips"]

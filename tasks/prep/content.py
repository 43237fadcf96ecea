"""The content encoder's features: every ingested clip as HiFi-VC's ASR input, a 16 kHz log-mel.

The `asr` stage (and the `vc` stage, whose frozen encoder reads them) fills these into its
cache before training, cached by content like every other stage: the clip's audio hash, the mel's
settings, the code below and the torch/soxr versions. Per clip:

    int16 PCM at audio.sample_rate (ingest) --soxr VHQ--> float at 16 kHz
    --model.hifivc.LogMel(CONTENT_MEL)--> log mel [80, T // 160] float32 (10 ms frames)

The mel is the one the exported model computes inside (HiFiVC.bottleneck), so what the encoder
trains on is what it sees at conversion time. Computed with one torch thread, as the vocoder's
(tasks/prep/vocoder.py one_torch_thread): the bits do not depend on the core count.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.cache import Entry, ResultCache, cache_key_with
from tasks.core.code import code_hash
from tasks.core.shards import RecordReader
from tasks.prep.clips import ClipTooShort, short_clip

CACHE_NAME = "asr"  # the stage cache's name (runtime.cache_dir/asr.sqlite)


def content_settings(source_rate: int) -> dict[str, Any]:
    """What a clip's features depend on besides its audio, as plain values (model.hifivc's)."""
    from model.hifivc import CONTENT_MEL

    return {"source_rate": source_rate, "mel": dict(CONTENT_MEL)}


@dataclass(frozen=True)
class ContentItem:
    row: dict[str, Any]  # an ingest index row
    key: str


def plan_content(rows: list[dict[str, Any]], source_rate: int) -> list[ContentItem]:
    from importlib.metadata import version

    key = cache_key_with(code=code_hash(__name__), settings=content_settings(source_rate), torch=version("torch"),
                         soxr=version("soxr"))
    return [ContentItem(row, key(audio=row["sha256"])) for row in rows]


def clip_mel(pcm: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    """int16 PCM at settings['source_rate'] -> log mel [80, T16k // 160] float32."""
    import torch

    from model.hifivc import LogMel
    from tasks.prep.audio import resample

    mel_cfg = settings["mel"]
    audio = pcm.astype(np.float32) / 32768.0
    if settings["source_rate"] != mel_cfg["sample_rate"]:
        audio = resample(audio, settings["source_rate"], mel_cfg["sample_rate"])
    pad = (mel_cfg["n_fft"] - mel_cfg["hop_length"]) // 2
    if len(audio) <= max(pad, mel_cfg["hop_length"]):
        raise ClipTooShort(f"{len(audio)} samples at {mel_cfg['sample_rate']} Hz is too short for the content mel "
                           f"(n_fft {mel_cfg['n_fft']} reflect-pads by {pad})")
    with torch.no_grad():
        return LogMel(**mel_cfg)(torch.from_numpy(np.ascontiguousarray(audio))[None])[0].numpy()


def content_chunk(items: list[ContentItem], ingest_dir: Path, settings: dict[str, Any]) -> list[tuple[str, Entry]]:
    """The features of `items` (run with torch at one thread, as vocoder_chunk)."""
    out = []
    with RecordReader(ingest_dir) as shards:
        for item in items:
            try:
                mel = clip_mel(shards.pcm(item.row), settings)
            except ClipTooShort as err:  # a reject (the stage record lists it), not the stage's end
                out.append((item.key, short_clip(item.row, err)))
                continue
            out.append((item.key, Entry({"frames": mel.shape[1], "n_mels": mel.shape[0]}, mel.astype("<f4").tobytes())))
    return out


def read_mel(cache: ResultCache, key: str) -> np.ndarray:
    """One clip's log mel [80, F] float32 from the cache."""
    entry = cache.get(key)
    if entry is None:
        raise KeyError(f"{key}: not in the asr cache {cache.path} (run the asr stage)")
    return np.frombuffer(entry.data, dtype="<f4").reshape(entry.meta["n_mels"], entry.meta["frames"])


# ----------------------------------------------------------------------------- the vc stage's


VC_CACHE_NAME = "vc"  # runtime.cache_dir/vc.sqlite: per clip the source's lf0 and the 24 kHz target


def vc_settings(source_rate: int) -> dict[str, Any]:
    from model.hifivc import CONTENT_HOP, CONTENT_RATE, OUTPUT_RATE

    return {"source_rate": source_rate, "content_rate": CONTENT_RATE, "hop": CONTENT_HOP, "output_rate": OUTPUT_RATE}


def plan_vc(rows: list[dict[str, Any]], source_rate: int) -> list[ContentItem]:
    from importlib.metadata import version

    key = cache_key_with(code=code_hash(__name__), settings=vc_settings(source_rate), torch=version("torch"),
                         soxr=version("soxr"))
    return [ContentItem(row, key(audio=row["sha256"])) for row in rows]


def vc_chunk(items: list[ContentItem], ingest_dir: Path, settings: dict[str, Any]) -> list[tuple[str, Entry]]:
    """Per clip: lf0 [T16k // 160] float32 (model.hifivc.yin_lf0, which the exported model's
    `preprocess` computes too) and int16 PCM at 24 kHz (the generator's target and the references)."""
    import torch

    from model.hifivc import yin_lf0
    from tasks.prep.audio import resample, to_int16

    out = []
    with RecordReader(ingest_dir) as shards:
        for item in items:
            audio = shards.pcm(item.row).astype(np.float32) / 32768.0
            src = resample(audio, settings["source_rate"], settings["content_rate"])
            if len(src) <= 1024:
                out.append((item.key, short_clip(item.row, ClipTooShort(
                    f"{len(src)} samples at 16 kHz is too short for the F0 frames (more than 1024)"))))
                continue
            with torch.no_grad():
                lf0 = yin_lf0(torch.from_numpy(np.ascontiguousarray(src))[None])[0].numpy().astype("<f4")
            pcm24 = to_int16(resample(audio, settings["source_rate"], settings["output_rate"])).astype("<i2")
            if len(pcm24) < 32 * 256:  # the speaker encoder's five halvings need 32 mel frames of a reference
                out.append((item.key, short_clip(item.row, ClipTooShort(
                    f"{len(pcm24) / 24000:.2f} s is shorter than the 0.35 s a reference needs"))))
                continue
            out.append((item.key, Entry({"frames": len(lf0), "samples": len(pcm24)}, lf0.tobytes() + pcm24.tobytes())))
    return out


def read_vc(cache: ResultCache, key: str) -> tuple[np.ndarray, np.ndarray]:
    """One clip's (lf0 [F] float32, int16 PCM at 24 kHz [N])."""
    entry = cache.get(key)
    if entry is None:
        raise KeyError(f"{key}: not in the vc cache {cache.path} (run the vc stage)")
    f = entry.meta["frames"]
    return (np.frombuffer(entry.data, dtype="<f4", count=f),
            np.frombuffer(entry.data, dtype="<i2", offset=4 * f, count=entry.meta["samples"]))

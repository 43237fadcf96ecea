"""The vocoder's features: every ingested clip at the vocoder's rate with its WaveGlow log-mel.

The `waveglow` stage fills these into its cache before training (cached by content like every
other stage: the clip's audio hash, params `vocoder.data_config` and the code below), and the
training loader and the copy-synthesis of `evaluate` read them back. Per clip:

    int16 PCM at audio.sample_rate (ingest) --soxr VHQ--> int16 at data_config.sampling_rate
    --/32768--> model.waveglow.mel_spectrogram --> log mel [n_mel_channels, T // 256 + 1] float32

int16 because NVIDIA's loader reads int16 WAVs (mel2samp.py: MAX_WAV_VALUE); at equal rates the
ingested PCM is used unchanged. The mel is computed on the whole clip with one torch thread (so its
last bits do not depend on the machine's core count); training cuts segments out of it. A clip of
no more than filter_length / 2 samples at the vocoder's rate (the STFT's reflect padding needs
more) is a ClipTooShort naming the clip, not torch's padding error, and the stage's reject.
"""
from __future__ import annotations

from contextlib import contextmanager

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.cache import Entry, ResultCache, cache_key_with
from tasks.core.code import code_hash
from tasks.core.config import Params
from tasks.core.shards import RecordReader
from tasks.prep.clips import ClipTooShort, short_clip

CACHE_NAME = "waveglow"  # the stage cache's name (runtime.cache_dir/waveglow.sqlite)


def vocoder_settings(params: Params) -> dict[str, Any]:
    """What a clip's features depend on besides its audio: plain values, no torch import."""
    v = params.vocoder
    return {"source_rate": params.audio.sample_rate,
            "mel": v.data_config.mel_kwargs(v.waveglow_config.n_mel_channels)}


@dataclass(frozen=True)
class VocoderItem:
    row: dict[str, Any]  # an ingest index row
    key: str


def plan_vocoder(rows: list[dict[str, Any]], params: Params) -> list[VocoderItem]:
    from importlib.metadata import version

    key = cache_key_with(code=code_hash(__name__), settings=vocoder_settings(params), torch=version("torch"),
                         soxr=version("soxr"))
    return [VocoderItem(row, key(audio=row["sha256"])) for row in rows]


def clip_features(pcm: np.ndarray, settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """int16 PCM at settings['source_rate'] -> (int16 PCM at the vocoder's rate, log mel [M, F] float32)."""
    import torch

    from model.waveglow import MAX_WAV_VALUE, mel_spectrogram
    from tasks.prep.audio import resample, to_int16

    mel_kwargs = settings["mel"]
    if settings["source_rate"] != mel_kwargs["sampling_rate"]:
        pcm = to_int16(resample(pcm.astype(np.float32) / 32768.0, settings["source_rate"],
                                mel_kwargs["sampling_rate"]))
    pad = mel_kwargs["filter_length"] // 2  # the STFT reflect-pads by half its window: it needs more samples
    if len(pcm) <= pad:
        raise ClipTooShort(f"{len(pcm)} samples at {mel_kwargs['sampling_rate']} Hz is too short for the vocoder's mel "
                         f"(data_config.filter_length {mel_kwargs['filter_length']} reflect-pads by {pad}, which "
                         f"needs more than {pad} samples)")
    audio = torch.from_numpy(pcm.astype(np.float32) / MAX_WAV_VALUE)[None]
    with torch.no_grad():
        mel = mel_spectrogram(audio, **mel_kwargs)[0]
    return np.ascontiguousarray(pcm, dtype="<i2"), mel.numpy()


def vocoder_chunk(items: list[VocoderItem], ingest_dir: Path, settings: dict[str, Any]) -> list[tuple[str, Entry]]:
    """The features of `items`. Run with torch at one thread (`one_torch_thread`): the thread count
    is process-wide, so chunks in a thread pool cannot each set and restore it."""
    out = []
    with RecordReader(ingest_dir) as shards:
        for item in items:
            try:
                pcm, mel = clip_features(shards.pcm(item.row), settings)
            except ClipTooShort as err:  # a reject (the stage record lists it), not the stage's end
                out.append((item.key, short_clip(item.row, err)))
                continue
            out.append((item.key, Entry({"samples": len(pcm), "frames": mel.shape[1], "n_mels": mel.shape[0]},
                                        pcm.tobytes() + mel.astype("<f4").tobytes())))
    return out


@contextmanager
def one_torch_thread():
    """torch at one thread for the block (the feature chunks' setting: each chunk is one clip's
    small convolutions, the pool runs chunks side by side), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def read_features(cache: ResultCache, key: str) -> tuple[np.ndarray, np.ndarray]:
    """One clip's (int16 PCM [T], log mel [M, F] float32) from the cache."""
    entry = cache.get(key)
    if entry is None:
        raise KeyError(f"{key}: not in the vocoder cache {cache.path} (run the waveglow stage)")
    n, frames, n_mels = entry.meta["samples"], entry.meta["frames"], entry.meta["n_mels"]
    data = entry.data
    pcm = np.frombuffer(data, dtype="<i2", count=n)
    mel = np.frombuffer(data, dtype="<f4", offset=2 * n, count=n_mels * frames).reshape(n_mels, frames)
    return pcm, mel

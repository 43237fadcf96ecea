"""The one STFT of the project: linear and log-mel spectrograms as upstream Bert-VITS2 computes them.

The `spec` stage caches these and the trainer's mel loss recomputes them from generated audio, so
both must go through these functions: a cached feature that differs from the loss's feature
silently shifts what the model learns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch


@dataclass(frozen=True)
class STFTParams:
    sample_rate: int
    n_fft: int
    hop_length: int
    win_length: int
    n_mels: int
    fmin: float = 0.0
    fmax: Optional[float] = None


@lru_cache(maxsize=16)
def _hann(win_length: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(win_length, device=device, dtype=dtype)


def linear_spectrogram(y: torch.Tensor, p: STFTParams) -> torch.Tensor:
    """Magnitude STFT. y: [B, T] float in [-1, 1] -> [B, n_fft // 2 + 1, T // hop_length]."""
    pad = (p.n_fft - p.hop_length) // 2
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(y, p.n_fft, hop_length=p.hop_length, win_length=p.win_length,
                      window=_hann(p.win_length, str(y.device), y.dtype), center=False,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    # sqrt(re^2 + im^2 + 1e-6), upstream's magnitude (the epsilon keeps sqrt's gradient finite);
    # addcmul fuses the second square into the sum, a third faster than three separate ops.
    power = torch.addcmul(spec.real.square(), spec.imag, spec.imag)
    return torch.sqrt(power + 1e-6)


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    # Slaney's scale (librosa's default): linear below 1 kHz, logarithmic above.
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: Optional[float]) -> torch.Tensor:
    """Slaney-normalised triangular filters, [n_mels, n_fft // 2 + 1] (equal to librosa.filters.mel)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_pts = _mel_to_hz(torch.linspace(float(_hz_to_mel(torch.tensor(float(fmin)))),
                                        float(_hz_to_mel(torch.tensor(float(fmax)))), n_mels + 2,
                                        dtype=torch.float64))
    fdiff = mel_pts.diff()
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0)
    weights *= (2.0 / (mel_pts[2:] - mel_pts[:-2]))[:, None]  # equal area per filter
    return weights.float()


def spec_to_mel(spec: torch.Tensor, p: STFTParams) -> torch.Tensor:
    """Linear magnitude [B, F, T] -> log-mel [B, n_mels, T] (log of the magnitude, floor 1e-5)."""
    basis = mel_filterbank(p.sample_rate, p.n_fft, p.n_mels, p.fmin, p.fmax).to(spec.device, spec.dtype)
    return torch.log(torch.clamp(torch.matmul(basis, spec), min=1e-5))


def mel_spectrogram(y: torch.Tensor, p: STFTParams) -> torch.Tensor:
    """y: [B, T] -> log-mel [B, n_mels, T // hop_length]: what the mel loss compares."""
    return spec_to_mel(linear_spectrogram(y, p), p)

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
    return _magnitude_stft(y, _hann(p.win_length, str(y.device), y.dtype), p)


def pcm16_linear_spectrogram(pcm: torch.Tensor, p: STFTParams) -> torch.Tensor:
    """int16 PCM [T] -> [1, n_fft // 2 + 1, T // hop_length], bit for bit linear_spectrogram(pcm / 32768).

    The 1/32768 goes into the window: a power-of-two scale is exact in floating point, so the FFT
    sees the same numbers while the signal takes one conversion pass instead of three (cast, scale,
    pad). That saves the spec stage, which reads int16 shards, a tenth of its time per utterance."""
    pad, n = (p.n_fft - p.hop_length) // 2, pcm.shape[-1]
    if n <= pad:
        raise ValueError(f"{n} samples is too short to reflect-pad by {pad} (n_fft {p.n_fft})")
    y = torch.empty(1, n + 2 * pad, dtype=torch.float32, device=pcm.device)
    y[0, pad:pad + n] = pcm
    y[0, :pad] = y[0, pad + 1:2 * pad + 1].flip(0)  # the reflect padding of linear_spectrogram
    y[0, pad + n:] = y[0, n - 1:n + pad - 1].flip(0)
    return _magnitude_stft(y, _hann(p.win_length, str(y.device), y.dtype) * 2.0 ** -15, p)


def _magnitude_stft(y: torch.Tensor, window: torch.Tensor, p: STFTParams) -> torch.Tensor:
    spec = torch.stft(y, p.n_fft, hop_length=p.hop_length, win_length=p.win_length, window=window,
                      center=False, normalized=False, onesided=True, return_complex=True)
    # sqrt(re^2 + im^2 + 1e-6), upstream's magnitude (the epsilon keeps sqrt's gradient finite), in
    # place on one buffer: these passes are memory-bound, so each allocation saved is time saved.
    # Autograd allows it (square and addcmul keep their inputs, sqrt its output).
    power = spec.real.square()
    return power.addcmul_(spec.imag, spec.imag).add_(1e-6).sqrt_()


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

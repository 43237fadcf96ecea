"""WaveGlow (Prenger et al. 2019), equal to NVIDIA's reference: a flow-based mel vocoder.

The contract is NVIDIA/waveglow at 8afb643 (`glow.py`, `mel2samp.py`, `denoiser.py`) with the
tacotron2 commit it pins (185cd24: `TacotronSTFT`, `STFT`): the same config keys, state_dict keys
and shapes (weight norm as `weight_g`/`weight_v`, and plain `weight` after `remove_weightnorm()`),
the same forward, loss, inference, mel and denoiser. `tests/model/test_waveglow.py` checks every
output against NVIDIA's own code run on fully random weights (`tests/data/waveglow_conformance/`).

Shapes: B batch, M mel channels (80), F mel frames, G n_group (8), T audio samples = F * 256.

    spect [B, M, F] --upsample (ConvTranspose1d k1024 s256)--> [B, M, F*256 + 768] --trim, group-->
    cond  [B, M*G, T/G]
    audio [B, T] --group--> [B, G, T/G] --(n_flows x: 1x1 invertible conv, affine coupling by WN;
    every n_early_every flows n_early_size channels leave as output)--> z [B, G, T/G]

`infer` runs the flows backwards from noise of std sigma. What is not NVIDIA's (same numbers, less
work): inference computes W^-1 per call instead of caching it on the module forever (a cache that
goes stale when the weights are trained further), the loss does not add into log_det_W_list[0]
in place, WN splits its conditioning instead of slicing it per layer (a cheaper backward: see
WN.forward), and `infer` writes each flow's half into place rather than concatenating a new tensor
per flow. `WaveGlowInference` is the serving path (and what export traces): the same inference
with weight norm baked and the work reorganised (its docstring), equal within float rounding. `remove_weightnorm()` is a method returning the
model (NVIDIA: a staticmethod taking it).

NVIDIA's published checkpoints are pickles of its classes; `load_nvidia_checkpoint` reads them
without running pickled code (torch's weights-only unpickler, NVIDIA's class names bound to inert
stand-ins), and also reads plain state dicts and safetensors.
"""
from __future__ import annotations

import copy
import math
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from model.mel_processing import mel_filterbank
from model.waveglow_config import HOP_LENGTH, check_config

MAX_WAV_VALUE = 32768.0  # NVIDIA's int16 scale (mel2samp.py)
UPSAMPLE_KERNEL = 1024


# ---------------------------------------------------------------------------------------------
# Tacotron 2's STFT: a convolution with a windowed Fourier basis (not torch.stft), so that its
# numbers, and the denoiser's inverse, equal NVIDIA's.

def _hann_periodic(win_length: int, filter_length: int) -> torch.Tensor:
    """scipy's get_window('hann', win_length, fftbins=True), zero-padded to filter_length
    (librosa's pad_center), float64."""
    w = torch.hann_window(win_length, periodic=True, dtype=torch.float64)
    left = (filter_length - win_length) // 2
    return F.pad(w, (left, filter_length - win_length - left))


class STFT(nn.Module):
    """Tacotron 2's STFT (filter_length-point, hop, Hann window) with its inverse."""

    def __init__(self, filter_length: int = 1024, hop_length: int = 256, win_length: int = 1024):
        super().__init__()
        if win_length > filter_length:
            raise ValueError(f"win_length {win_length} exceeds filter_length {filter_length}")
        self.filter_length, self.hop_length, self.win_length = filter_length, hop_length, win_length
        n, cutoff = filter_length, filter_length // 2 + 1
        fourier = torch.fft.fft(torch.eye(n, dtype=torch.float64))  # row k: exp(-2 pi i k n / N)
        basis = torch.cat([fourier.real[:cutoff], fourier.imag[:cutoff]])  # [2 * cutoff, N]
        window = _hann_periodic(win_length, filter_length).float()
        # NVIDIA casts the basis to float32 first and windows it in float32; so do we.
        self.register_buffer("forward_basis", basis.float()[:, None, :] * window, persistent=False)
        self.register_buffer("window_sq", (window.double() ** 2).float(), persistent=False)
        self._inverse_basis: Optional[torch.Tensor] = None  # only the denoiser inverts: made on first use

    @property
    def inverse_basis(self) -> torch.Tensor:
        """[2 (N/2 + 1), 1, N]: the pseudo-inverse of the Fourier basis (float64 pinv, 0.6-2 s at
        N = 1024 on CPU, so computed once, when `inverse` first runs), windowed as NVIDIA's."""
        if self._inverse_basis is None or self._inverse_basis.device != self.forward_basis.device:
            n, cutoff = self.filter_length, self.filter_length // 2 + 1
            fourier = torch.fft.fft(torch.eye(n, dtype=torch.float64))
            basis = torch.cat([fourier.real[:cutoff], fourier.imag[:cutoff]])
            window = _hann_periodic(self.win_length, self.filter_length).float()
            inverse = torch.linalg.pinv(basis * (self.filter_length / self.hop_length)).T[:, None, :]
            self._inverse_basis = (inverse.float() * window).to(self.forward_basis.device)
        return self._inverse_basis

    def transform(self, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """y [B, T] -> magnitude, phase [B, N/2 + 1, T // hop + 1] (reflect padding of N/2)."""
        pad = self.filter_length // 2
        y = F.pad(y.unsqueeze(1), (pad, pad), mode="reflect")
        ft = F.conv1d(y, self.forward_basis, stride=self.hop_length)
        cutoff = self.filter_length // 2 + 1
        real, imag = ft[:, :cutoff], ft[:, cutoff:]
        return torch.sqrt(real ** 2 + imag ** 2), torch.atan2(imag, real)

    def inverse(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """magnitude, phase [B, N/2 + 1, frames] -> audio [B, 1, (frames - 1) * hop]."""
        combined = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1)
        y = F.conv_transpose1d(combined, self.inverse_basis, stride=self.hop_length)
        window_sum = self._window_sumsquare(magnitude.size(-1))
        nonzero = window_sum > torch.finfo(torch.float32).tiny  # librosa's tiny(): modulation undone
        y[:, :, nonzero] /= window_sum[nonzero]
        y = y * (float(self.filter_length) / self.hop_length)
        pad = self.filter_length // 2
        return y[:, :, pad:-pad]

    def _window_sumsquare(self, n_frames: int) -> torch.Tensor:
        """The overlap-added squared window (librosa 0.6's window_sumsquare, float32)."""
        n = self.filter_length + self.hop_length * (n_frames - 1)
        frames = self.window_sq.to(torch.float32).expand(n_frames, -1).T.unsqueeze(0)  # [1, N, frames]
        ones = F.fold(frames, output_size=(1, n), kernel_size=(1, self.filter_length),
                      stride=(1, self.hop_length))
        return ones.reshape(n)


class TacotronSTFT(nn.Module):
    """Log-mel spectrograms as NVIDIA's `Mel2Samp.get_mel` computes them (tacotron2 layers.py)."""

    def __init__(self, filter_length: int = 1024, hop_length: int = 256, win_length: int = 1024,
                 n_mel_channels: int = 80, sampling_rate: int = 22050, mel_fmin: float = 0.0,
                 mel_fmax: Optional[float] = 8000.0):
        super().__init__()
        self.stft_fn = STFT(filter_length, hop_length, win_length)
        basis = mel_filterbank(int(sampling_rate), filter_length, n_mel_channels, float(mel_fmin),
                               None if mel_fmax is None else float(mel_fmax))
        self.register_buffer("mel_basis", basis.clone(), persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y [B, T] float in [-1, 1] -> log mel [B, n_mel, T // hop + 1], log of clamp 1e-5."""
        magnitude, _ = self.stft_fn.transform(y)
        return torch.log(torch.clamp(torch.matmul(self.mel_basis, magnitude), min=1e-5))


_MEL_CACHE: "OrderedDict[tuple, TacotronSTFT]" = OrderedDict()


def mel_spectrogram(audio: torch.Tensor, sampling_rate: int = 22050, filter_length: int = 1024,
                    hop_length: int = 256, win_length: int = 1024, n_mel_channels: int = 80,
                    mel_fmin: float = 0.0, mel_fmax: Optional[float] = 8000.0) -> torch.Tensor:
    """audio [B, T] float in [-1, 1) -> log mel [B, n_mel_channels, T // hop_length + 1]: NVIDIA's
    `Mel2Samp.get_mel` (which takes int16-scaled audio and divides by 32768 first)."""
    if audio.dim() != 2:
        raise ValueError(f"audio must be [B, T], got shape {tuple(audio.shape)}")
    if audio.numel() and (audio.min() < -1 or audio.max() > 1):
        raise ValueError("audio must be float in [-1, 1] (NVIDIA's TacotronSTFT asserts it); "
                         "int16 samples need / 32768")
    key = (int(sampling_rate), filter_length, hop_length, win_length, n_mel_channels, float(mel_fmin),
           mel_fmax, str(audio.device))
    stft = _MEL_CACHE.get(key)
    if stft is None:
        stft = TacotronSTFT(filter_length, hop_length, win_length, n_mel_channels, sampling_rate,
                            mel_fmin, mel_fmax).to(audio.device)
        _MEL_CACHE[key] = stft
        while len(_MEL_CACHE) > 8:
            _MEL_CACHE.popitem(last=False)
    return stft(audio.float())


# ---------------------------------------------------------------------------------------------
# The network.

class WNConv1d(nn.Module):
    """Conv1d under weight normalisation with NVIDIA's parameter names and order: `bias`,
    `weight_g` [C_out, 1, 1] and `weight_v` [C_out, C_in, k]; weight = g * v / ||v|| per output
    channel (torch._weight_norm, dim 0: the computation `torch.nn.utils.weight_norm` hooks in)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 padding: int = 0):
        super().__init__()
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, padding=padding)
        self.dilation, self.padding = dilation, padding
        self.bias = conv.bias
        v = conv.weight.detach()
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))
        self.weight_v = nn.Parameter(v.clone())

    def weight(self) -> torch.Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, dilation=self.dilation, padding=self.padding)

    def plain(self) -> nn.Conv1d:
        """The same convolution with its weight baked (NVIDIA's remove_weight_norm): parameters in
        NVIDIA's order after removal, `bias` then `weight`."""
        out_ch, in_ch, k = self.weight_v.shape
        conv = nn.Conv1d(in_ch, out_ch, k, dilation=self.dilation, padding=self.padding)
        with torch.no_grad():
            weight = self.weight().detach().clone()
        conv._parameters = OrderedDict(bias=self.bias, weight=nn.Parameter(weight))
        return conv.to(self.weight_v.device)


class Invertible1x1Conv(nn.Module):
    """A c x c channel mixing with its log-determinant; NVIDIA initialises W as a random rotation."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv1d(c, c, kernel_size=1, stride=1, padding=0, bias=False)
        w = torch.linalg.qr(torch.randn(c, c))[0]
        if not w.is_meta and torch.det(w) < 0:  # a rotation (det +1), not a reflection
            w[:, 0] = -w[:, 0]
        self.conv.weight.data = w.view(c, c, 1)

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """z [B, c, N] -> (W z, B * N * log|det W|)."""
        batch, _, n_groups = z.shape
        w = self.conv.weight.squeeze(-1)
        log_det_w = batch * n_groups * torch.linalg.slogdet(w)[1]
        return self.conv(z), log_det_w

    def inverse_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """W^-1 [c, c, 1] in float32 (NVIDIA inverts in float32, then casts for fp16)."""
        return self.conv.weight.squeeze(-1).float().inverse().to(dtype)[..., None]

    def reverse(self, z: torch.Tensor) -> torch.Tensor:
        return F.conv1d(z, self.inverse_weight(z.dtype))


class WN(nn.Module):
    """The affine coupling's WaveNet: non-causal dilated convs (dilation 2^i), gated by the
    conditioning; outputs [B, 2 * n_in, N] = (b, log s). `end` starts at zero (coupling = identity)."""

    def __init__(self, n_in_channels: int, n_mel_channels: int, n_layers: int, n_channels: int,
                 kernel_size: int):
        super().__init__()
        self.n_layers, self.n_channels = n_layers, n_channels
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.start = WNConv1d(n_in_channels, n_channels, 1)
        self.end = nn.Conv1d(n_channels, 2 * n_in_channels, 1)
        self.end.weight.data.zero_()
        self.end.bias.data.zero_()
        self.cond_layer = WNConv1d(n_mel_channels, 2 * n_channels * n_layers, 1)
        for i in range(n_layers):
            dilation = 2 ** i
            padding = (kernel_size * dilation - dilation) // 2
            self.in_layers.append(WNConv1d(n_channels, 2 * n_channels, kernel_size, dilation, padding))
            # the last layer feeds only the skip path
            res_skip = 2 * n_channels if i < n_layers - 1 else n_channels
            self.res_skip_layers.append(WNConv1d(n_channels, res_skip, 1))

    def forward(self, audio: torch.Tensor, spect: torch.Tensor) -> torch.Tensor:
        """audio [B, n_in, N], spect [B, M*G, N] -> [B, 2 * n_in, N]."""
        n = self.n_channels
        audio = self.start(audio)
        output = torch.zeros_like(audio)
        # split, not sliced per layer as NVIDIA does: a slice's backward writes its gradient into a
        # zeroed tensor of the whole cond ([B, 2 n L, N], 8 times per flow), split's concatenates
        # once; the training step ran 1.15x NVIDIA's so at 16000 samples on CPU (its ~1.0x otherwise)
        conds = self.cond_layer(spect).split(2 * n, dim=1)
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            # tanh(a) * sigmoid(b) of in_layer(audio) + cond: NVIDIA's scripted
            # fused_add_tanh_sigmoid_multiply
            acts = in_layer(audio) + conds[i]
            acts = torch.tanh(acts[:, :n]) * torch.sigmoid(acts[:, n:])
            res_skip = res_skip_layer(acts)
            if i < self.n_layers - 1:
                audio = audio + res_skip[:, :n]
                output = output + res_skip[:, n:]
            else:
                output = output + res_skip
        return self.end(output)


class WaveGlow(nn.Module):
    def __init__(self, n_mel_channels: int, n_flows: int, n_group: int, n_early_every: int,
                 n_early_size: int, WN_config: dict):
        super().__init__()
        sizes = check_config(n_mel_channels, n_flows, n_group, n_early_every, n_early_size, WN_config)
        self.config = dict(n_mel_channels=n_mel_channels, n_flows=n_flows, n_group=n_group,
                           n_early_every=n_early_every, n_early_size=n_early_size, WN_config=dict(WN_config))
        self.upsample = nn.ConvTranspose1d(n_mel_channels, n_mel_channels, UPSAMPLE_KERNEL, stride=HOP_LENGTH)
        self.n_mel_channels, self.n_flows, self.n_group = n_mel_channels, n_flows, n_group
        self.n_early_every, self.n_early_size = n_early_every, n_early_size
        self.WN = nn.ModuleList()
        self.convinv = nn.ModuleList()
        for c in sizes:
            self.convinv.append(Invertible1x1Conv(c))
            self.WN.append(WN(c // 2, n_mel_channels * n_group, **WN_config))
        self.n_remaining_channels = sizes[-1]

    def _check_mel(self, spect: torch.Tensor) -> None:
        if spect.dim() != 3 or spect.size(1) != self.n_mel_channels:
            raise ValueError(f"mel must be [B, {self.n_mel_channels}, frames], got {tuple(spect.shape)}")

    def _group(self, spect: torch.Tensor) -> torch.Tensor:
        """Upsampled spect [B, M, T] -> [B, M * G, T / G]: each group's G frames of M channels."""
        spect = spect.unfold(2, self.n_group, self.n_group).permute(0, 2, 1, 3)  # [B, T/G, M, G]
        spect = spect.contiguous().view(spect.size(0), spect.size(1), -1)  # [B, T/G, M*G]
        # contiguous once: every flow's every layer convolves it (each would reorder a strided view)
        return spect.transpose(1, 2).contiguous()

    def _is_early(self, k: int) -> bool:
        return k % self.n_early_every == 0 and k > 0

    def forward(self, spect, audio: Optional[torch.Tensor] = None):
        """spect [B, M, F], audio [B, T] (T <= F * 256) -> (z [B, G, T/G], log_s_list, log_det_W_list).

        NVIDIA's `forward((spect, audio))`: a (spect, audio) tuple as the only argument works too."""
        if audio is None:
            spect, audio = spect
        self._check_mel(spect)
        spect = self.upsample(spect)
        if spect.size(2) < audio.size(1):
            raise ValueError(f"audio of {audio.size(1)} samples is longer than its mel covers "
                             f"({spect.size(2)} samples)")
        spect = self._group(spect[:, :, :audio.size(1)])
        audio = audio.unfold(1, self.n_group, self.n_group).permute(0, 2, 1)  # [B, G, T/G]
        output_audio, log_s_list, log_det_w_list = [], [], []
        for k in range(self.n_flows):
            if self._is_early(k):
                output_audio.append(audio[:, :self.n_early_size])
                audio = audio[:, self.n_early_size:]
            audio, log_det_w = self.convinv[k](audio)
            log_det_w_list.append(log_det_w)
            n_half = audio.size(1) // 2
            audio_0, audio_1 = audio[:, :n_half], audio[:, n_half:]
            output = self.WN[k](audio_0, spect)
            log_s, b = output[:, n_half:], output[:, :n_half]
            audio_1 = torch.exp(log_s) * audio_1 + b
            log_s_list.append(log_s)
            audio = torch.cat([audio_0, audio_1], 1)
        output_audio.append(audio)
        return torch.cat(output_audio, 1), log_s_list, log_det_w_list

    def infer(self, spect: torch.Tensor, sigma: float = 1.0,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """spect [B, M, F] -> audio [B, F * 256], from noise of std sigma (0: deterministic)."""
        self._check_mel(spect)
        spect = self.upsample(spect)
        spect = self._group(spect[:, :, :-(UPSAMPLE_KERNEL - HOP_LENGTH)])  # trim the conv's tail
        batch, n = spect.size(0), spect.size(2)
        # the whole z at once: channels [0, n_early outputs ..., n_remaining] as forward lays them
        audio = torch.randn(batch, self.n_group, n, generator=generator, device=spect.device,
                            dtype=spect.dtype).mul_(sigma)
        lo = self.n_group - self.n_remaining_channels  # audio[:, lo:] is the part still in the flow
        for k in reversed(range(self.n_flows)):
            cur = audio[:, lo:]
            n_half = cur.size(1) // 2
            output = self.WN[k](cur[:, :n_half], spect)
            s, b = output[:, n_half:], output[:, :n_half]
            cur[:, n_half:] = (cur[:, n_half:] - b) / torch.exp(s)
            audio[:, lo:] = self.convinv[k].reverse(cur)
            if self._is_early(k):
                lo -= self.n_early_size  # the early channels' noise joins (NVIDIA: cat(sigma z, audio))
        return audio.permute(0, 2, 1).reshape(batch, -1)

    def remove_weightnorm(self) -> "WaveGlow":
        """Bake every weight norm into a plain weight (same values); returns the model."""
        for wn in self.WN:
            wn.start = wn.start.plain()
            wn.cond_layer = wn.cond_layer.plain()
            wn.in_layers = nn.ModuleList(m.plain() for m in wn.in_layers)
            wn.res_skip_layers = nn.ModuleList(m.plain() for m in wn.res_skip_layers)
        return self

    @property
    def has_weight_norm(self) -> bool:
        return isinstance(self.WN[0].start, WNConv1d)


class _CouplingInverse(nn.Module):
    """One flow backwards with plain weights, for `WaveGlowInference`: WN's layers with `end`
    folded into each layer's skip half (end is linear, so end(sum skip_i) = sum end(skip_i): the
    skip convs shrink from n_channels to 2 * n_half outputs, and the running sum with them), the
    cond conv one layer's slice at a time (the slice stays in cache for its add: ~30% less time
    for the cond conv, about half of WaveGlow's work, on CPU), `start` folded into the first
    dilated conv, the gate as one sigmoid, and W^-1 split by halves so the coupling's output needs
    no concatenation."""

    def __init__(self, wn: WN, convinv: Invertible1x1Conv):
        super().__init__()
        n, n_layers = wn.n_channels, wn.n_layers
        self.n_channels, self.n_layers = n, n_layers
        self.n_half = wn.end.out_channels // 2
        self.start = _baked(wn.start)
        cond = _baked(wn.cond_layer)
        self.in_layers = nn.ModuleList(_baked(m) for m in wn.in_layers)
        self.cond_layers = nn.ModuleList()  # cond_layer per layer, its bias moved into in_layer's
        for i, in_layer in enumerate(self.in_layers):
            rows = slice(i * 2 * n, (i + 1) * 2 * n)
            layer = nn.Conv1d(cond.in_channels, 2 * n, 1, bias=False)
            layer.weight.data = cond.weight.detach()[rows].contiguous()
            in_layer.bias.data = (in_layer.bias.detach() + cond.bias.detach()[rows]).contiguous()
            self.cond_layers.append(layer)
        end_w = wn.end.weight.detach().squeeze(-1)  # [2 n_half, n]
        self.res_skip_layers = nn.ModuleList()
        for i, layer in enumerate(wn.res_skip_layers):
            layer = _baked(layer)
            w, b = layer.weight.detach().squeeze(-1), layer.bias.detach()
            skip_w, skip_b = (w[n:], b[n:]) if i < n_layers - 1 else (w, b)
            rows_w = [end_w @ skip_w]
            rows_b = [end_w @ skip_b + (wn.end.bias.detach() if i == 0 else 0)]
            if i < n_layers - 1:
                rows_w.insert(0, w[:n])
                rows_b.insert(0, b[:n])
            conv = nn.Conv1d(n, sum(r.size(0) for r in rows_w), 1)
            conv.weight.data = torch.cat(rows_w)[..., None].contiguous()
            conv.bias.data = torch.cat(rows_b).contiguous()
            self.res_skip_layers.append(conv)
        self._fold_start_into_first_layer()
        self._gate_by_one_sigmoid()
        w_inv = convinv.conv.weight.detach().squeeze(-1).double().inverse().float()  # [c, c]
        h = convinv.conv.in_channels // 2
        self.register_buffer("w_inv_0", w_inv[:, :h, None].contiguous())
        self.register_buffer("w_inv_1", w_inv[:, h:, None].contiguous())

    def _fold_start_into_first_layer(self) -> None:
        """`start` (1x1, h -> n) and the first dilated conv (n -> 2n) are both linear, so the first
        conv can read the h audio channels directly: W' = W_0 @ W_start per tap. It drops one of the
        eight dilated convs' work, 6% of a flow's multiply-adds (3.8% of inference time measured,
        same run, 12 rounds). start's bias reaches the first conv only through the taps that do
        not read its zero padding: `start_bias_taps` (W_0 @ b_start per tap) convolved with ones
        gives exactly that at every output, for any length (a 1-channel conv: 0.4% of the first's)."""
        first, start = self.in_layers[0], self.start
        w0 = first.weight.detach().double()  # [2n, n, K]
        ws, bs = start.weight.detach().double().squeeze(-1), start.bias.detach().double()  # [n, h], [n]
        fused = nn.Conv1d(ws.size(1), w0.size(0), w0.size(2), dilation=first.dilation, padding=first.padding)
        fused.weight.data = torch.einsum("oik,ij->ojk", w0, ws).float().contiguous()
        fused.bias.data = first.bias.detach().clone()
        self.in_layers[0] = fused
        taps = torch.einsum("oik,i->ok", w0, bs)[:, None].float().contiguous()  # [2n, 1, K]
        self.register_buffer("start_bias_taps", taps)

    @torch.no_grad()
    def _gate_by_one_sigmoid(self) -> None:
        """tanh(a) * sigmoid(b) = 2 (sigmoid(2a) - 1/2) sigmoid(b): the 2 inside goes into the tanh
        half's weights, the 2 outside into the next conv's weights (both exact in binary floating
        point), so the gate is one sigmoid over [a; b], a subtraction and a product. On this CPU
        torch's tanh costs 7x its sigmoid (1.31 vs 0.19 ms for [1, 256, 2752]). The profile put
        the whole gate at 4% of inference, yet this measured 1.057x (same process, 12 rounds: the
        start fold alone 1.038x, both 1.097x). Differs from tanh by float rounding (~2e-7)."""
        n = self.n_channels
        for in_layer, cond_layer, res_skip_layer in zip(self.in_layers, self.cond_layers, self.res_skip_layers):
            in_layer.weight[:n] *= 2
            in_layer.bias[:n] *= 2
            cond_layer.weight[:n] *= 2
            res_skip_layer.weight *= 2
        self.start_bias_taps[:n] *= 2

    def forward(self, audio: torch.Tensor, spect: torch.Tensor) -> torch.Tensor:
        """audio [B, c, N] (this flow's output), spect [B, M*G, N] -> its input [B, c, N]."""
        n, h = self.n_channels, self.n_half
        audio_0, audio_1 = audio[:, :h], audio[:, h:]
        x = self.start(audio_0)  # the residual path's input; the first conv reads audio_0 itself
        out = torch.zeros_like(audio)  # [B, 2 h, N] = (b, log s)
        for i, (in_layer, cond_layer, res_skip_layer) in enumerate(
                zip(self.in_layers, self.cond_layers, self.res_skip_layers)):
            if i == 0:
                start_bias = F.conv1d(torch.ones_like(audio_0[:1, :1]), self.start_bias_taps,
                                      padding=in_layer.padding, dilation=in_layer.dilation)  # [1, 2n, N]
                acts = in_layer(audio_0) + cond_layer(spect) + start_bias
            else:
                acts = in_layer(x) + cond_layer(spect)
            acts = torch.sigmoid(acts)  # the gate, see _gate_by_one_sigmoid
            acts = (acts[:, :n] - 0.5) * acts[:, n:]
            res_skip = res_skip_layer(acts)
            if i < self.n_layers - 1:
                x = x + res_skip[:, :n]
                out = out + res_skip[:, n:]
            else:
                out = out + res_skip
        audio_1 = (audio_1 - out[:, :h]) * torch.exp(-out[:, h:])
        return F.conv1d(audio_0, self.w_inv_0) + F.conv1d(audio_1, self.w_inv_1)


def _weight_and_bias(conv: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    return (conv.weight() if isinstance(conv, WNConv1d) else conv.weight), conv.bias


def _baked(conv: nn.Module) -> nn.Conv1d:
    """A private plain copy of a (weight-normed) conv: the inference module folds into its
    weights, which must not reach the source model (plain() shares the bias)."""
    weight, bias = (t.detach().clone() for t in _weight_and_bias(conv))
    out = nn.Conv1d(weight.size(1), weight.size(0), weight.size(2), dilation=conv.dilation, padding=conv.padding)
    out.weight.data, out.bias.data = weight, bias
    return out


class WaveGlowInference(nn.Module):
    """WaveGlow's `infer` for serving and export: weight norm baked, W^-1 computed once (in
    float64), `end` folded into the skip convs, no per-flow concatenation, the noise drawn in the
    graph (`randn_like`, ONNX RandomNormalLike) so that `torch.jit.trace` and the ONNX exporter
    record one graph for any batch and length.

        mel [B, M, F], sigma [] -> audio [B, F * 256]

    The same numbers as `WaveGlow.infer` up to float reassociation (sigma 0: the tests bound it);
    a private copy: later training of the source model does not reach it."""

    input_names = ["mel", "sigma"]
    output_names = ["audio"]
    dynamic_axes = {"mel": {0: "batch", 2: "frames"}, "audio": {0: "batch", 1: "samples"}}

    def __init__(self, waveglow: WaveGlow):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the throwaway modules' init must not move the caller's RNG
            self._build(waveglow)
        weight = waveglow.upsample.weight
        self.to(device=weight.device, dtype=weight.dtype).eval().requires_grad_(False)

    def _build(self, waveglow: WaveGlow) -> None:
        self.config = copy.deepcopy(waveglow.config)
        self.n_mel_channels, self.n_group = waveglow.n_mel_channels, waveglow.n_group
        self.n_early_every, self.n_early_size = waveglow.n_early_every, waveglow.n_early_size
        self.n_remaining_channels = waveglow.n_remaining_channels
        self.upsample = nn.ConvTranspose1d(waveglow.n_mel_channels, waveglow.n_mel_channels,
                                           UPSAMPLE_KERNEL, stride=HOP_LENGTH)
        self.upsample.load_state_dict(waveglow.upsample.state_dict())
        self.flows = nn.ModuleList(_CouplingInverse(wn, conv) for wn, conv in zip(waveglow.WN, waveglow.convinv))

    def forward(self, mel: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch, g = mel.size(0), self.n_group
        spect = self.upsample(mel)[:, :, :-(UPSAMPLE_KERNEL - HOP_LENGTH)]  # [B, M, F*256]
        # _group as reshapes (ONNX has no Unfold): T = F * 256 is a multiple of G
        spect = spect.reshape(batch, self.n_mel_channels, -1, g).permute(0, 2, 1, 3)  # [B, T/G, M, G]
        spect = spect.reshape(batch, -1, self.n_mel_channels * g).transpose(1, 2).contiguous()  # [B, M*G, T/G]
        z = torch.randn_like(spect[:, :g]) * sigma  # [B, G, T/G], forward's channel layout
        lo = g - self.n_remaining_channels
        audio = z[:, lo:]
        for k in range(len(self.flows) - 1, -1, -1):
            audio = self.flows[k](audio, spect)
            if k % self.n_early_every == 0 and k > 0:
                lo -= self.n_early_size
                audio = torch.cat([z[:, lo:lo + self.n_early_size], audio], 1)
        return audio.transpose(1, 2).reshape(batch, -1)

    @torch.inference_mode()
    def infer(self, mel: torch.Tensor, sigma: float = 0.6) -> torch.Tensor:
        if mel.dim() != 3 or mel.size(1) != self.n_mel_channels:
            raise ValueError(f"mel must be [B, {self.n_mel_channels}, frames], got {tuple(mel.shape)}")
        return self(mel, torch.tensor(float(sigma), dtype=mel.dtype, device=mel.device))


class WaveGlowLoss(nn.Module):
    """-log p(audio | mel) per sample: |z|^2 / (2 sigma^2) - sum log s - sum log|det W|, / z.numel()."""

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        self.sigma = sigma

    def forward(self, model_output) -> torch.Tensor:
        z, log_s_list, log_det_w_list = model_output
        log_s_total = sum(torch.sum(log_s) for log_s in log_s_list)
        log_det_w_total = sum(log_det_w_list)
        loss = torch.sum(z * z) / (2 * self.sigma * self.sigma) - log_s_total - log_det_w_total
        return loss / (z.size(0) * z.size(1) * z.size(2))


class Denoiser(nn.Module):
    """Removes the model's bias: the magnitude spectrum WaveGlow produces from a silent (all-zero,
    or random with mode='normal') mel, times `strength`, is subtracted from the audio's (NVIDIA's
    denoiser.py; its STFT hop is filter_length / n_overlap)."""

    def __init__(self, waveglow: WaveGlow, filter_length: int = 1024, n_overlap: int = 4,
                 win_length: int = 1024, mode: str = "zeros"):
        super().__init__()
        weight = waveglow.upsample.weight
        self.stft = STFT(filter_length, filter_length // n_overlap, win_length).to(weight.device)
        shape = (1, waveglow.n_mel_channels, 88)
        if mode == "zeros":
            mel = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        elif mode == "normal":
            mel = torch.randn(shape, dtype=weight.dtype, device=weight.device)
        else:
            raise ValueError(f"Denoiser mode must be 'zeros' or 'normal', got {mode!r}")
        with torch.no_grad():
            bias_audio = waveglow.infer(mel, sigma=0.0).float()
            bias_spec, _ = self.stft.transform(bias_audio)
        self.register_buffer("bias_spec", bias_spec[:, :, :1])  # [1, N/2 + 1, 1]

    def forward(self, audio: torch.Tensor, strength: float = 0.1) -> torch.Tensor:
        """audio [B, T] -> denoised [B, 1, T'] (T' = T rounded down to the STFT's hop)."""
        spec, angles = self.stft.transform(audio.float())
        spec = torch.clamp(spec - self.bias_spec * strength, 0.0)
        return self.stft.inverse(spec, angles)


# ---------------------------------------------------------------------------------------------
# Loading NVIDIA's checkpoints without running pickled code.

class CheckpointError(ValueError):
    """A file that is not a WaveGlow checkpoint (or not one this loader can read safely)."""


class _Inert:
    """Stand-in for a class a checkpoint's pickle names: unpickling fills its __dict__, nothing runs."""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise CheckpointError(f"{type(self).__name__}: unexpected pickled state {type(state).__name__}")
        self.__dict__.update(state)


def _stand_in(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (_Inert,), {"qualname": qualname})


# Every class an NVIDIA training checkpoint names (the conformance README lists them), bound to an
# inert stand-in. glow_old.py's checkpoints name the same classes from the `glow_old` module.
_NVIDIA_CLASSES = [f"{mod}.{cls}" for mod in ("glow", "glow_old")
                   for cls in ("WaveGlow", "WN", "Invertible1x1Conv")] + [
    "torch.nn.modules.conv.Conv1d", "torch.nn.modules.conv.ConvTranspose1d",
    "torch.nn.modules.container.ModuleList", "torch.nn.utils.weight_norm.WeightNorm",
]
_STAND_INS = {name: _stand_in(name) for name in _NVIDIA_CLASSES}


def _collect_state(obj, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    """A stand-in module tree -> its state_dict: `_parameters` and persistent `_buffers` of every
    submodule. The plain `weight` attribute of a weight-normed conv is NOT read: NVIDIA's
    save_checkpoint leaves it stale (computed at construction), weight_g/weight_v are the truth."""
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    d = getattr(obj, "__dict__", {})
    non_persistent = d.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (d.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
            state[prefix + name] = value.detach()
    for name, child in (d.get("_modules") or {}).items():
        if child is not None:
            state.update(_collect_state(child, f"{prefix}{name}."))
    return state


def infer_config(state_dict: Dict[str, torch.Tensor]) -> dict:
    """NVIDIA's waveglow_config from a state dict's shapes (training form or after
    remove_weightnorm): the shapes determine every key; n_early_every is the first flow whose
    1x1 conv is narrower (n_flows when none is)."""
    def shape(key: str) -> Tuple[int, ...]:
        if key not in state_dict:
            raise CheckpointError(f"not a WaveGlow state dict: no {key!r}")
        return tuple(state_dict[key].shape)

    n_mel = shape("upsample.weight")[0]
    n_flows = len({k.split(".")[1] for k in state_dict if k.startswith("WN.")})
    if n_flows == 0:
        raise CheckpointError("not a WaveGlow state dict: no WN.* keys")
    sizes = [shape(f"convinv.{k}.conv.weight")[0] for k in range(n_flows)]
    drops = [k for k in range(1, n_flows) if sizes[k] != sizes[k - 1]]
    n_early_every = drops[0] if drops else n_flows
    n_early_size = sizes[drops[0] - 1] - sizes[drops[0]] if drops else 0
    weight = "weight_v" if "WN.0.start.weight_v" in state_dict else "weight"
    n_layers = len({k.split(".")[3] for k in state_dict if k.startswith("WN.0.in_layers.")})
    n_channels, _, kernel_size = shape(f"WN.0.in_layers.0.{weight}")
    return dict(n_mel_channels=n_mel, n_flows=n_flows, n_group=sizes[0], n_early_every=n_early_every,
                n_early_size=n_early_size,
                WN_config=dict(n_layers=n_layers, n_channels=n_channels // 2, kernel_size=kernel_size))


def from_state_dict(state_dict: Dict[str, torch.Tensor], config: Optional[dict] = None) -> WaveGlow:
    """Build a WaveGlow (the config from the shapes unless given) and load the state dict strictly;
    one with plain weights (weight norm removed) gives a model with weight norm removed."""
    config = config or infer_config(state_dict)
    model = WaveGlow(**config)
    if "WN.0.start.weight_v" not in state_dict:
        model.remove_weightnorm()
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"state dict does not fit WaveGlow({config}): {e}") from None
    return model


def _fuse_old_layout(state: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    """glow_old.py's WN (per-layer `cond_layers`, separate `res_layers` and `skip_layers`) in the
    current layout, as NVIDIA's convert_model.py does: bake weight norm, concatenate, re-normalise."""
    def baked(prefix: str) -> Tuple[torch.Tensor, torch.Tensor]:
        if prefix + "weight_v" in state:
            w = torch._weight_norm(state.pop(prefix + "weight_v"), state.pop(prefix + "weight_g"), 0)
        else:
            w = state.pop(prefix + "weight")
        return w, state.pop(prefix + "bias")

    def put(prefix: str, w: torch.Tensor, b: torch.Tensor) -> None:
        state[prefix + "bias"] = b
        state[prefix + "weight_g"] = torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True)
        state[prefix + "weight_v"] = w

    flows = sorted({int(k.split(".")[1]) for k in state if k.startswith("WN.")})
    for f in flows:
        p = f"WN.{f}."
        n_layers = len({k.split(".")[3] for k in state if k.startswith(p + "cond_layers.")})
        if not n_layers:
            continue
        cond = [baked(f"{p}cond_layers.{i}.") for i in range(n_layers)]
        put(p + "cond_layer.", torch.cat([w for w, _ in cond]), torch.cat([b for _, b in cond]))
        for i in range(n_layers):
            skip_w, skip_b = baked(f"{p}skip_layers.{i}.")
            if i < n_layers - 1:
                res_w, res_b = baked(f"{p}res_layers.{i}.")
                skip_w, skip_b = torch.cat([res_w, skip_w]), torch.cat([res_b, skip_b])
            put(f"{p}res_skip_layers.{i}.", skip_w, skip_b)
    return state


def load_nvidia_checkpoint(path: Union[str, Path]) -> Tuple[WaveGlow, dict]:
    """Read a WaveGlow checkpoint -> (model in training form, info).

    Accepts NVIDIA's training checkpoints (`{'model': <pickled glow.WaveGlow>, 'iteration',
    'optimizer', 'learning_rate'}`, the published files' format; or the bare pickled model), a
    state dict (`torch.save(model.state_dict())`, or under 'model'/'state_dict'), and safetensors.
    Pickles are read by torch's weights-only unpickler: NVIDIA's classes are bound to inert
    stand-ins and any other class is refused with an error naming it, so no pickled code runs and
    no module named `glow` is imported. info: {'format', 'iteration', 'learning_rate', 'config'}.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    info: dict = {"format": None, "iteration": None, "learning_rate": None}
    if len(head) == 8 and not zipfile.is_zipfile(path) and head[:2] != b"\x80\x02" and \
            int.from_bytes(head, "little") < path.stat().st_size:
        state = _load_safetensors(path)
        info["format"] = "safetensors"
    else:
        obj = _load_pickle(path)
        state, info = _unwrap(obj, path, info)
    if any(".cond_layers." in k for k in state):
        state = _fuse_old_layout(OrderedDict(state))
        info["converted_from"] = "glow_old"
    try:
        model = from_state_dict(state)
    except (CheckpointError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not model.has_weight_norm:
        info["weight_norm"] = "removed"
    info["config"] = model.config
    return model, info


def _load_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _load_pickle(path: Path):
    import pickle
    allowed = [(cls, name) for name, cls in _STAND_INS.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        if found:
            raise CheckpointError(f"{path}: refused: the pickle names {found.group(1)}, which is not on the "
                                  "allow-list (NVIDIA's glow classes, the torch.nn modules they hold, "
                                  "weight-norm hooks, tensors); nothing from it was run") from None
        detail = re.search(r"WeightsUnpickler error: ([^\n]+)", str(e))
        raise CheckpointError(f"{path}: not a readable torch checkpoint (the weights-only unpickler "
                              f"failed: {detail.group(1) if detail else 'invalid pickle data'})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def _unwrap(obj, path: Path, info: dict):
    if isinstance(obj, dict) and "model" in obj:
        for key in ("iteration", "learning_rate"):
            value = obj.get(key)
            info[key] = value.item() if isinstance(value, torch.Tensor) else value
        obj = obj["model"]
    elif isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if isinstance(obj, _Inert):
        if getattr(type(obj), "qualname", "").rsplit(".", 1)[-1] != "WaveGlow":
            raise CheckpointError(f"{path}: holds a pickled {type(obj).qualname}, not a WaveGlow")
        info["format"] = "nvidia"
        return _collect_state(obj), info
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        info["format"] = "state_dict"
        return OrderedDict(obj), info
    raise CheckpointError(f"{path}: not a WaveGlow checkpoint (holds a {type(obj).__name__}; expected "
                          "NVIDIA's {'model': WaveGlow, ...}, a state dict or safetensors)")


__all__ = ["CheckpointError", "Denoiser", "HOP_LENGTH", "Invertible1x1Conv", "MAX_WAV_VALUE", "STFT",
           "TacotronSTFT", "WN", "WNConv1d", "WaveGlow", "WaveGlowInference", "WaveGlowLoss", "check_config", "from_state_dict",
           "infer_config", "load_nvidia_checkpoint", "mel_spectrogram"]

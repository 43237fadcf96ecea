"""HiFi-VC (Kashkin et al., "HiFi-VC: High Quality ASR-Based Voice Conversion", 2022): any-to-any
voice conversion, the whole family in one file, pure PyTorch, scriptable (torch.jit.script).

    wav_src_16k [B, T] --LogMel(16 kHz)--> [B, 80, F]   F = T // 160 (10 ms frames)
        --ContentEncoder (Conformer, the ASR's encoder; its CTC head trains it)--> [B, d, Tc]
                                                                   Tc = ceil(F / 2) (20 ms frames)
    lf0 [B, F] (log Hz, 0 where unvoiced; `yin_lf0`) --F0Encoder (per-utterance normalised,
        voiced flag)--> [B, f0_channels, Tc]
    mel_ref_24k [B, 80, T_ref] --SpeakerEncoder (VAE)--> mean, logvar [B, 128, 1]
    Generator (HiFi-GAN): conv_pre(content ++ f0) -> per upsampling block, the speaker embedding
        projected to the block's width and added to its input -> wav_24k [B, 1, Tc * 480]
        (480 = 24000 Hz * 20 ms, so N = T * 1.5: the source's seconds at 24 kHz)

The SpeakerEncoder is the one of the authors' published TorchScript model (the seminar reads its
modules and graph): `pre_conv` Conv1d(80, 32, 3) without weight norm; `convs`, DownBlockSpeaker
blocks 32 -> 64 -> 128 -> 256 -> 512 -> 512, each `x_skip = avg_pool1d(x, 2)` (through a 1x1
`conv_skip` where the width changes) plus `second_conv(act(avg_pool1d(first_conv(act(x)), 2)))`,
`act` LeakyReLU(0.1), first_conv k3 keeping the width, second_conv k1 to the new width, all three
weight-normed; the time average; `mean_conv`, `logvar_conv` Conv1d(512, 128, 1), weight-normed.
In training the embedding is sampled (mean + exp(logvar / 2) * noise, with the KL term
`kl_divergence`); at inference it is the mean. The rest is the paper's description at a
configurable size; where the published model's choice is not recoverable (the F0 encoder, how
content and F0 meet), the choice here is the simplest that the paper's text allows.

Weight norm is a parametrization (model/commons.py) in training; `remove_weight_norm()` bakes it
before scripting (parametrizations do not script). The TorchScript export is `HiFiVC` itself:
`forward(wav_src_16k, mel_ref_24k, lf0) -> wav_24k [B, N]` and `preprocess(wav_src_16k,
wav_ref_24k) -> (mel_ref_24k, lf0)`, the seminar's interface.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from model import commons
from model.commons import weight_norm
from model.mel_processing import mel_filterbank

CONTENT_RATE, CONTENT_HOP = 16000, 160  # the ASR's input: 16 kHz, 10 ms log-mel frames
OUTPUT_RATE = 24000
SPEAKER_MEL = dict(sample_rate=24000, n_fft=1024, hop_length=256, win_length=1024, n_mels=80, fmin=0.0,
                   fmax=12000.0)  # the reference's mel (HiFi-GAN's at 24 kHz)
CONTENT_MEL = dict(sample_rate=CONTENT_RATE, n_fft=512, hop_length=CONTENT_HOP, win_length=400, n_mels=80,
                   fmin=0.0, fmax=8000.0)
LOGVAR_INIT = -5.0  # SpeakerEncoder's logvar bias at init (its comment says why)
LF0_CENTRE, LF0_SCALE = math.log(160.0), 0.5  # F0Encoder norm "none": log Hz around 160 Hz, half a unit ~ 0.7 octave



# ----------------------------------------------------------------------------- features


class LogMel(nn.Module):
    """[B, T] float audio -> log-mel [B, n_mels, T // hop]: model/mel_processing.py's
    mel_spectrogram (reflect pad (n_fft - hop) / 2, magnitude sqrt(|X|^2 + 1e-6), Slaney
    filters, log of clamp 1e-5) as a scriptable module with its window and filters as buffers."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, win_length: int, n_mels: int,
                 fmin: float = 0.0, fmax: Optional[float] = None):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        self.register_buffer("basis", mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax).clone(), persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        pad = (self.n_fft - self.hop_length) // 2
        y = F.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(y, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=False, normalized=False, onesided=True, return_complex=True)
        mag = torch.sqrt(spec.real.square() + spec.imag.square() + 1e-6)
        return torch.log(torch.clamp(torch.matmul(self.basis, mag), min=1e-5))


def yin_lf0(y: torch.Tensor, sample_rate: int = CONTENT_RATE, hop_length: int = CONTENT_HOP,
            frame_length: int = 1024, fmin: float = 50.0, fmax: float = 800.0, threshold: float = 0.15,
            silence_db: float = -50.0) -> torch.Tensor:
    """YIN (de Cheveigne & Kawahara 2002) log-F0, scriptable: [B, T] -> [B, T // hop_length],
    log Hz where voiced, 0 where not (a frame below `silence_db` RMS or whose cumulative-mean-
    normalised difference never falls below `threshold`). Frames as LogMel's at the same hop, so
    lf0 and the content mel align frame for frame. The period is the deepest dip of the normalised
    difference within an octave above its first crossing (YIN's "absolute threshold" step, which
    avoids the octave-too-low error), refined by a parabola through its neighbours."""
    tau_min = int(sample_rate // fmax)
    tau_max = int(math.ceil(sample_rate / fmin))
    width = frame_length - tau_max  # the integration window
    pad = (frame_length - hop_length) // 2
    x = F.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    frames = x.unfold(-1, frame_length, hop_length)  # [B, F, L]
    # the gate reads the raw window: after the frame's mean is taken out, a silent window before
    # an onset holds a constant offset loud enough to pass, and a constant has d(tau) = 0 everywhere
    rms_db = 10 * torch.log10(frames[..., :width].square().mean(-1) + 1e-12)
    frames = frames - frames.mean(-1, keepdim=True)
    n_fft = 1
    while n_fft < frame_length + width:  # no wrap-around in the correlation
        n_fft *= 2
    # d(tau) = sum_j (x_j - x_{j+tau})^2 over j < width = e(0) + e(tau) - 2 r(tau)
    a = torch.fft.rfft(frames, n_fft)
    b = torch.fft.rfft(frames[..., :width], n_fft)
    r = torch.fft.irfft(a * torch.conj(b), n_fft)[..., :tau_max + 1]  # r(tau) = sum_j x_j x_{j+tau}
    sq = F.pad(frames.square().cumsum(-1), (1, 0))
    taus = torch.arange(tau_max + 1, device=y.device)
    energy = sq[..., width:width + tau_max + 1] - sq[..., :tau_max + 1]  # e(tau) = sum_{j<width} x_{j+tau}^2
    d = (energy[..., :1] + energy - 2 * r).clamp(min=0.0)
    cum = d[..., 1:].cumsum(-1)
    cmnd = torch.ones_like(d)
    cmnd[..., 1:] = d[..., 1:] * taus[1:] / cum.clamp(min=1e-12)
    search = cmnd[..., tau_min:tau_max]
    below = search < threshold
    first = torch.argmax(below.to(torch.int64), -1)  # the first crossing (0 where none: unvoiced)
    idx = torch.arange(search.shape[-1], device=y.device)
    window = (idx >= first.unsqueeze(-1)) & (idx < 2 * first.unsqueeze(-1) + tau_min)
    best = torch.argmin(torch.where(window, search, torch.full_like(search, 2.0)), -1)
    t = (best + tau_min).clamp(1, tau_max - 1)
    left = cmnd.gather(-1, (t - 1).unsqueeze(-1)).squeeze(-1)
    mid = cmnd.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    right = cmnd.gather(-1, (t + 1).unsqueeze(-1)).squeeze(-1)
    denom = left - 2 * mid + right
    shift = torch.where(denom.abs() > 1e-12, 0.5 * (left - right) / denom, torch.zeros_like(denom))
    period = t.to(y.dtype) + shift.clamp(-1.0, 1.0)
    flat = cum[..., -1] <= 1e-6 * energy[..., 0]  # no variation in the window: no period to find
    voiced = below.any(-1) & (rms_db > silence_db) & ~flat
    return torch.where(voiced, torch.log(period.reciprocal() * sample_rate), torch.zeros_like(period))


# ----------------------------------------------------------------------------- content: a Conformer


class FeedForward(nn.Module):
    def __init__(self, d: int, mult: int, p_dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d * mult), nn.SiLU(), nn.Dropout(p_dropout),
                                 nn.Linear(d * mult, d), nn.Dropout(p_dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvModule(nn.Module):
    """Conformer's convolution module: pointwise -> GLU -> depthwise k -> norm -> SiLU -> pointwise.
    LayerNorm over channels instead of BatchNorm, so padded frames do not enter any statistics."""

    def __init__(self, d: int, kernel: int, p_dropout: float):
        super().__init__()
        self.norm_in = nn.LayerNorm(d)
        self.pointwise_in = nn.Conv1d(d, 2 * d, 1)
        self.depthwise = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.norm = nn.LayerNorm(d)
        self.pointwise_out = nn.Conv1d(d, d, 1)
        self.dropout = nn.Dropout(p_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: [B, T, d], mask: [B, T, 1] (1 inside)
        h = F.glu(self.pointwise_in((self.norm_in(x) * mask).transpose(1, 2)), dim=1)  # [B, d, T]
        h = self.depthwise(h * mask.transpose(1, 2))
        h = F.silu(self.norm(h.transpose(1, 2)))  # [B, T, d]
        return self.dropout(self.pointwise_out(h.transpose(1, 2)).transpose(1, 2))


class ConformerBlock(nn.Module):
    """Gulati et al. 2020: half FFN, self-attention, convolution, half FFN, LayerNorm."""

    def __init__(self, d: int, n_heads: int, ff_mult: int, kernel: int, p_dropout: float):
        super().__init__()
        self.ff1 = FeedForward(d, ff_mult, p_dropout)
        self.norm_attn = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_heads, dropout=p_dropout, batch_first=True)
        self.dropout = nn.Dropout(p_dropout)
        self.conv = ConvModule(d, kernel, p_dropout)
        self.ff2 = FeedForward(d, ff_mult, p_dropout)
        self.norm_out = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        h = self.norm_attn(x)
        h = self.attn(h, h, h, key_padding_mask=mask.squeeze(-1) < 0.5, need_weights=False)[0]
        x = x + self.dropout(h)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm_out(x) * mask


def sinusoids(length: int, d: int, device: torch.device) -> torch.Tensor:
    """Absolute sinusoidal positions [length, d] (Vaswani et al.)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    out = torch.zeros(length, d, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)
    return out


class ContentEncoder(nn.Module):
    """The ASR's encoder: log-mel [B, 80, F] -> bottleneck [B, d, Tc], Tc = ceil(F / 2) (a
    stride-2 convolution subsamples to 20 ms), and CTC logits [B, Tc, n_symbols + 1] (blank 0)
    from its head when it has symbols (the `asr` stage trains it on the corpus's phones)."""

    def __init__(self, n_mels: int = 80, d_model: int = 256, n_heads: int = 4, n_layers: int = 8, ff_mult: int = 4,
                 conv_kernel: int = 15, n_symbols: int = 0, p_dropout: float = 0.1):
        super().__init__()
        self.subsample = nn.Conv1d(n_mels, d_model, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList([ConformerBlock(d_model, n_heads, ff_mult, conv_kernel, p_dropout)
                                     for _ in range(n_layers)])
        self.ctc = nn.Linear(d_model, n_symbols + 1) if n_symbols > 0 else nn.Identity()
        self.d_model = d_model

    @staticmethod
    def output_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(mel_lengths + 1, 2, rounding_mode="floor")

    def forward(self, mel: torch.Tensor, mel_lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = F.gelu(self.subsample(mel)).transpose(1, 2)  # [B, Tc, d]
        lengths = self.output_lengths(mel_lengths) if mel_lengths is not None else \
            torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        mask = commons.sequence_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)  # [B, Tc, 1]
        x = (x + sinusoids(x.shape[1], self.d_model, x.device)) * mask
        for block in self.blocks:
            x = block(x, mask)
        return x.transpose(1, 2)  # [B, d, Tc]

    def ctc_logits(self, bottleneck: torch.Tensor) -> torch.Tensor:
        return self.ctc(bottleneck.transpose(1, 2))  # [B, Tc, n_symbols + 1]


# ----------------------------------------------------------------------------- F0 and speaker


class F0Encoder(nn.Module):
    """lf0 [B, F] (log Hz, 0 unvoiced) -> [B, channels, Tc]: log-F0 with the voiced flag beside it,
    resampled to the content frames, through two convolutions. `norm` "utterance" (the paper's):
    normalised per utterance over its voiced frames, so the target's pitch level and range come
    from the speaker embedding; "none": absolute, centred on LF0_CENTRE, so the output follows the
    lf0 it is given (shift it to the reference's mean for another speaker's level: `--pitch match`)."""

    def __init__(self, channels: int = 64, norm: str = "utterance"):
        super().__init__()
        if norm not in ("utterance", "none"):
            raise ValueError(f"F0Encoder norm: 'utterance' or 'none', got {norm!r}")
        self.norm, self.centre, self.scale = norm, LF0_CENTRE, LF0_SCALE  # (attributes: scripting takes no float globals)
        self.conv1 = nn.Conv1d(2, channels, 3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)

    def normalise(self, lf0: torch.Tensor) -> torch.Tensor:
        voiced = (lf0 > 0).to(lf0.dtype)
        if self.norm == "none":
            return torch.stack([(lf0 - self.centre) / self.scale * voiced, voiced], 1)
        n = voiced.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (lf0 * voiced).sum(-1, keepdim=True) / n
        var = (((lf0 - mean) * voiced).square()).sum(-1, keepdim=True) / n
        norm = (lf0 - mean) / torch.sqrt(var + 1e-4) * voiced
        return torch.stack([norm, voiced], 1)  # [B, 2, F]

    def inputs(self, lf0: torch.Tensor, frames: int) -> torch.Tensor:
        """[B, F] -> [B, 2, frames]: the normalised log-F0 and the voiced flag at the content rate
        (no weights: the trainer computes it per clip, then slices)."""
        return F.interpolate(self.normalise(lf0), size=frames, mode="linear", align_corners=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [B, 2, Tc] -> [B, channels, Tc]
        return self.conv2(F.leaky_relu(self.conv1(x), 0.1))

    def forward(self, lf0: torch.Tensor, frames: int) -> torch.Tensor:
        return self.encode(self.inputs(lf0, frames))


class DownBlockSpeaker(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.activation = nn.LeakyReLU(0.1)
        self.first_conv = weight_norm(nn.Conv1d(c_in, c_in, 3, padding=1))
        self.second_conv = weight_norm(nn.Conv1d(c_in, c_out, 1))
        self.conv_skip = weight_norm(nn.Conv1d(c_in, c_out, 1)) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, c_in, T] -> [B, c_out, T // 2]
        x_skip = self.conv_skip(F.avg_pool1d(x, 2))
        h = F.avg_pool1d(self.first_conv(self.activation(x)), 2)
        return x_skip + self.second_conv(self.activation(h))


class SpeakerEncoder(nn.Module):
    """The reference's 80-bin 24 kHz log-mel [B, 80, T_ref] (T_ref >= 32) -> (mean, logvar) [B, dim, 1]."""

    def __init__(self, n_mels: int = 80, dim: int = 128, widths: Sequence[int] = (32, 64, 128, 256, 512, 512)):
        super().__init__()
        self.pre_conv = nn.Conv1d(n_mels, widths[0], 3, padding=1)
        self.convs = nn.ModuleList([DownBlockSpeaker(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.mean_conv = weight_norm(nn.Conv1d(widths[-1], dim, 1))
        self.logvar_conv = weight_norm(nn.Conv1d(widths[-1], dim, 1))
        # The sampled embedding starts with noise std e^(LOGVAR_INIT / 2) ~ 0.08, not ~0.4: measured on
        # two real speakers, noise of norm ~3 (64 dims) swamped their 0.8 apart means at init and the
        # generator learned to ignore the reference; the KL term sets the noise from there.
        nn.init.constant_(self.logvar_conv.bias, LOGVAR_INIT)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pre_conv(mel)
        for block in self.convs:
            x = block(x)
        x = x.mean(-1, keepdim=True)  # the time average
        return self.mean_conv(x), self.logvar_conv(x)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), summed over the embedding, averaged over the batch."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum((1, 2)).mean()


# ----------------------------------------------------------------------------- the generator


class ResBlock(nn.Module):
    """HiFi-GAN's resblock, type "1" (dilated conv then conv, each pair residual) or "2" (one
    dilated conv each). model/modules.py has the Bert-VITS2 pair; this one scripts (TorchScript
    cannot read that module's global slope), with the slope 0.1 of both written in."""

    def __init__(self, channels: int, kernel_size: int, dilation: Sequence[int], kind: str):
        super().__init__()
        self.convs1 = nn.ModuleList([weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                                           padding=commons.get_padding(kernel_size, d)))
                                     for d in dilation])
        self.convs2 = nn.ModuleList([weight_norm(nn.Conv1d(channels, channels, kernel_size,
                                                           padding=commons.get_padding(kernel_size, 1)))
                                     if kind == "1" else nn.Identity() for _ in dilation])
        self.pairs = kind == "1"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c1(F.leaky_relu(x, 0.1))
            if self.pairs:
                xt = c2(F.leaky_relu(xt, 0.1))
            x = xt + x
        return x


class Generator(nn.Module):
    """HiFi-GAN whose input is content + F0 features [B, c_in, Tc] and whose every upsampling block
    gets the speaker embedding [B, speaker_dim, 1], linearly projected to the block's input width,
    added to its input. -> [B, 1, Tc * prod(upsample_rates)] in [-1, 1]."""

    def __init__(self, c_in: int, speaker_dim: int, upsample_initial_channel: int, upsample_rates: Sequence[int],
                 upsample_kernel_sizes: Sequence[int], resblock: str, resblock_kernel_sizes: Sequence[int],
                 resblock_dilation_sizes: Sequence[Sequence[int]]):
        super().__init__()
        for u, k in zip(upsample_rates, upsample_kernel_sizes):
            if (k - u) % 2:
                raise ValueError(f"upsample kernel {k} and rate {u}: k - u must be even for exact lengths")
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.conv_pre = weight_norm(nn.Conv1d(c_in, upsample_initial_channel, 7, padding=3))
        widths = [upsample_initial_channel // (2 ** i) for i in range(len(upsample_rates) + 1)]
        self.speaker_proj = nn.ModuleList([nn.Linear(speaker_dim, w) for w in widths[:-1]])
        self.ups = nn.ModuleList([weight_norm(nn.ConvTranspose1d(widths[i], widths[i + 1], k, u, padding=(k - u) // 2))
                                  for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes))])
        self.resblocks = nn.ModuleList([ResBlock(widths[i + 1], k, d, str(resblock)) for i in range(len(upsample_rates))
                                        for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes)])
        self.conv_post = weight_norm(nn.Conv1d(widths[-1], 1, 7, padding=3))

    def forward(self, x: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        s = speaker.squeeze(-1)  # [B, speaker_dim]
        for i, (proj, up) in enumerate(zip(self.speaker_proj, self.ups)):
            x = x + proj(s).unsqueeze(-1)
            x = up(F.leaky_relu(x, 0.1))
            xs = torch.zeros_like(x)
            for j, res in enumerate(self.resblocks):
                if i * self.num_kernels <= j < (i + 1) * self.num_kernels:
                    xs = xs + res(x)
            x = xs / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


# ----------------------------------------------------------------------------- the whole model


class HiFiVC(nn.Module):
    """Any-to-any conversion: the source's content and F0, the reference's voice (module doc). The
    defaults: HiFi-GAN V1's width at 24 kHz and 20 ms content frames (8 * 5 * 4 * 3 = 480 samples)."""

    def __init__(self, d_model: int = 256, n_heads: int = 4, n_layers: int = 8, ff_mult: int = 4, conv_kernel: int = 15,
                 n_symbols: int = 0, f0_channels: int = 64, speaker_dim: int = 128, upsample_initial_channel: int = 512,
                 upsample_rates: Sequence[int] = (8, 5, 4, 3), upsample_kernel_sizes: Sequence[int] = (16, 11, 8, 7),
                 resblock: str = "1", resblock_kernel_sizes: Sequence[int] = (3, 7, 11),
                 resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
                 p_dropout: float = 0.1, f0_norm: str = "utterance"):
        super().__init__()
        hop = 1
        for u in upsample_rates:
            hop *= u
        if hop * CONTENT_RATE != OUTPUT_RATE * 2 * CONTENT_HOP:
            raise ValueError(f"upsample_rates {list(upsample_rates)} multiply to {hop}; 20 ms content frames at "
                             f"{OUTPUT_RATE} Hz need {OUTPUT_RATE * 2 * CONTENT_HOP // CONTENT_RATE}")
        self.content_mel = LogMel(**CONTENT_MEL)
        self.speaker_mel = LogMel(**SPEAKER_MEL)
        self.content = ContentEncoder(CONTENT_MEL["n_mels"], d_model, n_heads, n_layers, ff_mult, conv_kernel,
                                      n_symbols, p_dropout)
        self.f0 = F0Encoder(f0_channels, f0_norm)
        self.speaker_encoder = SpeakerEncoder(SPEAKER_MEL["n_mels"], speaker_dim)
        self.generator = Generator(d_model + f0_channels, speaker_dim, upsample_initial_channel, upsample_rates,
                                   upsample_kernel_sizes, resblock, resblock_kernel_sizes, resblock_dilation_sizes)

    def speaker(self, mel_ref_24k: torch.Tensor, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embedding, mean, logvar): sampled when `sample` (training), else the mean."""
        mean, logvar = self.speaker_encoder(mel_ref_24k)
        emb = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean
        return emb, mean, logvar

    def bottleneck(self, wav_src_16k: torch.Tensor) -> torch.Tensor:
        """The content features [B, d, Tc] of 16 kHz audio [B, T] (the `vc` stage runs the encoder
        on the cached mel of each clip)."""
        return self.content(self.content_mel(wav_src_16k))

    def features(self, content: torch.Tensor, lf0: torch.Tensor) -> torch.Tensor:
        """The generator's input [B, d + f0_channels, Tc]: content and F0 features (training
        slices the content and `f0.inputs` per clip, as HiFi-GAN slices mels, then encodes)."""
        return torch.cat([content, self.f0(lf0, content.shape[-1])], 1)

    def decode(self, content: torch.Tensor, lf0: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """content [B, d, Tc], lf0 [B, F], speaker [B, speaker_dim, 1] -> [B, 1, Tc * 480]."""
        return self.generator(self.features(content, lf0), speaker)

    def forward(self, wav_src_16k: torch.Tensor, mel_ref_24k: torch.Tensor, lf0: torch.Tensor) -> torch.Tensor:
        """The seminar's call: [B, T] 16 kHz, [B, 80, T_ref], [B, F] -> 24 kHz audio [B, N]."""
        emb, _, _ = self.speaker(mel_ref_24k, sample=False)
        return self.decode(self.bottleneck(wav_src_16k), lf0, emb).squeeze(1)

    @torch.jit.export
    def preprocess(self, wav_src_16k: torch.Tensor, wav_ref_24k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mel_ref_24k [B, 80, T_ref // 256], lf0 [B, T // 160]) for `forward`."""
        return self.speaker_mel(wav_ref_24k), yin_lf0(wav_src_16k)

    def remove_weight_norm(self) -> "HiFiVC":
        for m in self.modules():
            if hasattr(m, "parametrizations") and "weight" in m.parametrizations:
                commons.remove_weight_norm(m)
        return self

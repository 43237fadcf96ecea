"""Bert-VITS2 2.3's training losses: the same math as upstream `losses.py`, written afresh.

- `feature_loss`          L1 between discriminator feature maps of real and generated audio (x2).
- `discriminator_loss`    LSGAN: real pushed to 1, generated to 0.
- `generator_loss`        LSGAN: generated pushed to 1.
- `kl_loss`               the VITS prior/posterior KL term (a one-sample estimate, see below).
- `WavLMLoss`             the speech-language-model (WavLM) feature loss and WavLM-discriminator
                          adversarial losses; the WavLM model and its discriminator are passed in.

Every loss computes in float32 whatever the input dtype, as upstream does, so that it is safe
under fp16/bf16 autocast.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["feature_loss", "discriminator_loss", "generator_loss", "kl_loss", "WavLMLoss",
           "Resample", "resample"]


def feature_loss(fmap_r: Sequence[Sequence[torch.Tensor]],
                 fmap_g: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """fmap_r, fmap_g: per discriminator, its list of feature maps (any shapes, matching between
    real and generated). Returns 2 * sum over all maps of mean |real - generated|; the real maps
    are detached, so only the generator side gets gradients."""
    loss = 0.0
    for maps_r, maps_g in zip(fmap_r, fmap_g):
        for r, g in zip(maps_r, maps_g):
            loss = loss + torch.mean(torch.abs(r.detach().float() - g.float()))
    return loss * 2


def discriminator_loss(disc_real_outputs: Sequence[torch.Tensor],
                       disc_generated_outputs: Sequence[torch.Tensor]
                       ) -> tuple[torch.Tensor, list[float], list[float]]:
    """LSGAN discriminator loss. Each list holds one output per sub-discriminator, e.g. [B, T_k].
    Returns (sum_k mean((1 - D(real))^2) + mean(D(fake)^2), per-k real terms, per-k fake terms);
    the per-k terms are Python floats, for logging."""
    loss = 0.0
    r_losses: list[float] = []
    g_losses: list[float] = []
    for d_real, d_fake in zip(disc_real_outputs, disc_generated_outputs):
        r_loss = torch.mean((1 - d_real.float()) ** 2)
        g_loss = torch.mean(d_fake.float() ** 2)
        loss = loss + r_loss + g_loss
        r_losses.append(r_loss.item())
        g_losses.append(g_loss.item())
    return loss, r_losses, g_losses


def generator_loss(disc_outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """LSGAN generator loss over one output per sub-discriminator ([B, T_k] each).
    Returns (sum_k mean((1 - D(fake))^2), the per-k terms as tensors)."""
    loss = 0.0
    gen_losses: list[torch.Tensor] = []
    for d_fake in disc_outputs:
        term = torch.mean((1 - d_fake.float()) ** 2)
        gen_losses.append(term)
        loss = loss + term
    return loss, gen_losses


def kl_loss(z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor,
            z_mask: torch.Tensor) -> torch.Tensor:
    """The VITS KL term, KL(q || p), estimated with the one sample z_p ~ q.

    z_p, logs_q: [B, H, T] a posterior sample (mapped through the flow) and the posterior log-std.
    m_p, logs_p: [B, H, T] prior mean and log-std (expanded to frames by the alignment).
    z_mask:      [B, 1, T] frame mask.

    Per element: log q(z) - log p(z) with the q side's quadratic replaced by its expectation,
        logs_p - logs_q - 1/2 + (z_p - m_p)^2 / (2 exp(2 logs_p)),
    whose expectation over z_p ~ N(m_q, exp(logs_q)^2) is the Gaussian KL(q || p). It is not
    symmetric in q and p, and a single sample at z_p == m_p with logs_q == logs_p gives -1/2, not
    0. Summed over channels and valid frames, divided by the number of valid frames (the mask is
    [B, 1, T], so this is a per-frame sum over H channels, as upstream).
    """
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)  # [B, H, T]
    return torch.sum(kl * z_mask) / torch.sum(z_mask)


# --- resampling, for WavLM's 16 kHz input -------------------------------------------------------

def _sinc_kernel(orig: int, new: int, lowpass_filter_width: int, rolloff: float
                 ) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc (Hann) filter bank for orig -> new (already divided by their gcd).
    Returns ([new, 1, 2 * pad + orig] float64 kernel, pad)."""
    cutoff = min(orig, new) * rolloff  # in units of the reduced rates: just below the lower Nyquist
    pad = math.ceil(lowpass_filter_width * orig / cutoff)
    taps = torch.arange(-pad, pad + orig, dtype=torch.float64)[None, None, :] / orig  # input times
    phase = -torch.arange(new, dtype=torch.float64)[:, None, None] / new  # each output's offset
    t = ((taps + phase) * cutoff).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / (2 * lowpass_filter_width)) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return sinc * window * (cutoff / orig), pad


class Resample(nn.Module):
    """Band-limited resampling orig_sr -> new_sr of [..., T] audio with a windowed-sinc filter
    (Hann window, 6 zero crossings, rolloff 0.99: the defaults of torchaudio.transforms.Resample,
    which upstream uses; torchaudio itself is not a dependency). Output length ceil(T * new / orig).
    The filter is a non-persistent buffer: it follows .to(device) but stays out of state_dict."""

    def __init__(self, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99):
        super().__init__()
        g = math.gcd(int(orig_sr), int(new_sr))
        self.orig, self.new = int(orig_sr) // g, int(new_sr) // g
        kernel, self.pad = _sinc_kernel(self.orig, self.new, lowpass_filter_width, rolloff)
        self.register_buffer("kernel", kernel.float(), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if self.orig == self.new:
            return wav
        *lead, T = wav.shape
        x = wav.reshape(-1, 1, T)
        x = F.pad(x, (self.pad, self.pad + self.orig))
        y = F.conv1d(x, self.kernel.to(x.dtype), stride=self.orig)  # [N, new, T / orig + 1]
        y = y.transpose(1, 2).reshape(x.shape[0], -1)  # interleave the phases: [N, ~T * new / orig]
        length = math.ceil(self.new * T / self.orig)
        return y[:, :length].reshape(*lead, length)


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Functional form of `Resample` (builds the filter on each call)."""
    return Resample(orig_sr, new_sr).to(wav.device)(wav)


# --- WavLM losses -------------------------------------------------------------------------------

class WavLMLoss(nn.Module):
    """Bert-VITS2 2.3's SLM losses.

    model: a frozen WavLM-like module called as `model(input_values=wav16, output_hidden_states=True)`
           returning an object with `.hidden_states`, a sequence of L [B, F, C] tensors (a
           transformers `WavLMModel`, e.g. microsoft/wavlm-base-plus: L = 13, C = 768).
    wd:    the WavLM discriminator, taking [B, L * C, F] (layers stacked along channels) and
           returning its score map (upstream's `WavLMDiscriminator`, e.g. [B, F']).
    model_sr: the TTS sample rate; audio is resampled to slm_sr (16 kHz) before WavLM.

    Audio arguments are [B, T] or [B, 1, T]. WavLM is frozen: eval mode (kept there by `train()`)
    and requires_grad False; gradients still flow through it to generated audio.
    """

    def __init__(self, model: nn.Module, wd: nn.Module, model_sr: int, slm_sr: int = 16000):
        super().__init__()
        self.wavlm = model
        self.wd = wd
        self.resample = Resample(model_sr, slm_sr)
        self.wavlm.eval()
        for p in self.wavlm.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "WavLMLoss":
        super().train(mode)
        self.wavlm.eval()  # frozen feature extractor: never dropout
        return self

    def _hidden(self, wav: torch.Tensor) -> Sequence[torch.Tensor]:
        """[B, T] or [B, 1, T] audio at model_sr -> L hidden states [B, F, C]."""
        if wav.dim() == 3:
            wav = wav.squeeze(1)
        return self.wavlm(input_values=self.resample(wav), output_hidden_states=True).hidden_states

    @staticmethod
    def _stack(hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        """L x [B, F, C] -> [B, L * C, F] (layer-major along channels), the discriminator's input."""
        return torch.stack(tuple(hidden), dim=1).transpose(-1, -2).flatten(start_dim=1, end_dim=2)

    def forward(self, wav: torch.Tensor, y_rec: torch.Tensor) -> torch.Tensor:
        """Feature loss: sum over layers of mean |WavLM(wav) - WavLM(y_rec)|. Scalar; gradients
        reach y_rec only."""
        with torch.no_grad():
            real = self._hidden(wav)
        fake = self._hidden(y_rec)
        loss = 0.0
        for r, g in zip(real, fake):
            loss = loss + torch.mean(torch.abs(r - g))
        return loss.mean()

    def generator(self, y_rec: torch.Tensor) -> torch.Tensor:
        """LSGAN generator term: mean (1 - wd(WavLM(y_rec)))^2. Gradients reach y_rec (and wd)."""
        score = self.wd(self._stack(self._hidden(y_rec)))
        return torch.mean((1 - score) ** 2)

    def discriminator(self, wav: torch.Tensor, y_rec: torch.Tensor) -> torch.Tensor:
        """LSGAN discriminator term: mean (1 - wd(real))^2 + mean wd(fake)^2. WavLM features are
        computed without gradient, so only wd learns from it (y_rec needs no detach)."""
        with torch.no_grad():
            real = self._stack(self._hidden(wav))
            fake = self._stack(self._hidden(y_rec))
        r_loss = torch.mean((1 - self.wd(real)) ** 2)
        g_loss = torch.mean(self.wd(fake) ** 2)
        return (r_loss + g_loss).mean()

    def discriminator_forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wd's scores for real audio (WavLM features without gradient)."""
        with torch.no_grad():
            real = self._stack(self._hidden(wav))
        return self.wd(real)

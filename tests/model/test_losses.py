"""The training losses: values worked out by hand on small tensors, and where gradients go."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from model.losses import (Resample, WavLMLoss, discriminator_loss, feature_loss, generator_loss,
                          kl_loss, resample)


# --- feature / LSGAN losses ---------------------------------------------------------------------

def test_feature_loss_value():
    fmap_r = [[torch.ones(2, 3), torch.zeros(4)], [torch.full((1, 5), 2.0)]]
    fmap_g = [[torch.zeros(2, 3), torch.full((4,), 0.5)], [torch.full((1, 5), 2.0)]]
    # 2 * (|1 - 0| + |0 - 0.5| + |2 - 2|) = 3
    assert feature_loss(fmap_r, fmap_g).item() == pytest.approx(3.0)
    assert feature_loss(fmap_r, fmap_r).item() == 0.0


def test_feature_loss_gradient_reaches_generator_only():
    r = torch.randn(2, 4, 8, requires_grad=True)
    g = torch.randn(2, 4, 8, requires_grad=True)
    feature_loss([[r]], [[g]]).backward()
    assert r.grad is None
    expected = 2 * torch.sign(g.detach() - r.detach()) / g.numel()
    assert torch.allclose(g.grad, expected)


def test_discriminator_loss_values():
    perfect, r_losses, g_losses = discriminator_loss([torch.ones(2, 7), torch.ones(3)],
                                                     [torch.zeros(2, 7), torch.zeros(3)])
    assert perfect.item() == 0.0 and r_losses == [0.0, 0.0] and g_losses == [0.0, 0.0]
    worst, r_losses, g_losses = discriminator_loss([torch.zeros(4)], [torch.ones(4)])
    assert worst.item() == 2.0 and r_losses == [1.0] and g_losses == [1.0]
    # D(real) = 0.5 and D(fake) = 0.5 everywhere: 0.25 + 0.25 per discriminator
    half, r_losses, g_losses = discriminator_loss([torch.full((3, 2), 0.5)] * 2, [torch.full((5,), 0.5)] * 2)
    assert half.item() == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in r_losses + g_losses)
    # mixed: D(real) = [1, 0] -> mean (0, 1) = 0.5; D(fake) = [0, 2] -> mean (0, 4) = 2
    mixed, r_losses, g_losses = discriminator_loss([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 2.0])])
    assert mixed.item() == pytest.approx(2.5) and r_losses == [0.5] and g_losses == [2.0]


def test_discriminator_loss_gradients():
    d_real = torch.tensor([0.25, 0.75], requires_grad=True)
    d_fake = torch.tensor([0.5, -1.0], requires_grad=True)
    loss, _, _ = discriminator_loss([d_real], [d_fake])
    loss.backward()
    assert torch.allclose(d_real.grad, -(1 - d_real.detach()))  # d/dx mean((1-x)^2) over 2 = -(1-x)
    assert torch.allclose(d_fake.grad, d_fake.detach())  # d/dx mean(x^2) over 2 = x


def test_generator_loss_values_and_gradients():
    loss, terms = generator_loss([torch.ones(2, 5), torch.ones(9)])
    assert loss.item() == 0.0 and [t.item() for t in terms] == [0.0, 0.0]
    d = torch.tensor([0.0, 3.0], requires_grad=True)  # (1 + 4) / 2 = 2.5
    loss, terms = generator_loss([d, torch.zeros(3)])
    assert loss.item() == pytest.approx(3.5)
    assert [t.item() for t in terms] == pytest.approx([2.5, 1.0])
    assert all(isinstance(t, torch.Tensor) for t in terms)
    loss.backward()
    assert torch.allclose(d.grad, torch.tensor([-1.0, 2.0]))  # -(1 - x)


def test_losses_compute_in_float32():
    half = [torch.full((4,), 0.5, dtype=torch.bfloat16)]
    assert discriminator_loss(half, half)[0].dtype == torch.float32
    assert generator_loss(half)[0].dtype == torch.float32
    assert feature_loss([half], [half]).dtype == torch.float32


# --- KL -----------------------------------------------------------------------------------------

def test_kl_hand_value():
    # logs_p = log 2, logs_q = 0, z - m_p = 2: log 2 - 0 - 1/2 + 1/2 * 4 / 4 = log 2 per element;
    # 3 channels summed per frame, averaged over the 5 frames -> 3 log 2.
    B, H, T = 2, 3, 5
    m_p = torch.randn(B, H, T)
    z_p = m_p + 2.0
    logs_p = torch.full((B, H, T), math.log(2.0))
    logs_q = torch.zeros(B, H, T)
    mask = torch.ones(B, 1, T)
    assert kl_loss(z_p, logs_q, m_p, logs_p, mask).item() == pytest.approx(3 * math.log(2.0), rel=1e-6)


def test_kl_identical_distributions_is_zero():
    """q == p: the estimate is 0 when the sample sits one std away (its quadratic then equals its
    expectation), and -1/2 per element at the mean: it is a one-sample estimate, not the closed form."""
    m = torch.randn(1, 4, 6)
    logs = torch.randn(1, 4, 6) * 0.3
    sign = torch.where(torch.arange(6) % 2 == 0, 1.0, -1.0)
    z = m + sign * torch.exp(logs)
    mask = torch.ones(1, 1, 6)
    assert kl_loss(z, logs, m, logs, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_loss(m, logs, m, logs, mask).item() == pytest.approx(-0.5 * 4, rel=1e-6)


def _standard_samples(n: int) -> torch.Tensor:
    eps = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return (eps - eps.mean()) / eps.std(unbiased=False)  # sample mean 0 and variance 1 exactly


def gaussian_kl(m_q, s_q, m_p, s_p) -> float:
    return math.log(s_p / s_q) + (s_q ** 2 + (m_q - m_p) ** 2) / (2 * s_p ** 2) - 0.5


def test_kl_is_kl_q_to_p_and_not_symmetric():
    """Averaged over samples z ~ q (standardised, so the average is exact), the estimate is the
    closed-form KL(q || p), which differs from KL(p || q)."""
    n = 4096
    m_q, s_q, m_p, s_p = 0.3, 0.5, -0.2, 1.5
    eps = _standard_samples(n).view(1, 1, n)
    z_p = m_q + s_q * eps
    full = lambda v: torch.full((1, 1, n), v, dtype=torch.float64)  # noqa: E731
    mask = torch.ones(1, 1, n)
    got = kl_loss(z_p, full(math.log(s_q)), full(m_p), full(math.log(s_p)), mask).item()
    assert got == pytest.approx(gaussian_kl(m_q, s_q, m_p, s_p), abs=1e-5)
    swapped = kl_loss(m_p + s_p * eps, full(math.log(s_p)), full(m_q), full(math.log(s_q)), mask).item()
    assert swapped == pytest.approx(gaussian_kl(m_p, s_p, m_q, s_q), abs=1e-5)
    assert abs(got - swapped) > 0.5


def test_kl_mask_and_gradients():
    B, H, T = 2, 3, 7
    torch.manual_seed(0)
    tensors = [torch.randn(B, H, T, requires_grad=True) for _ in range(4)]
    z_p, logs_q, m_p, logs_p = tensors
    mask = torch.ones(B, 1, T)
    mask[0, :, 4:] = 0
    mask[1, :, 6:] = 0
    loss = kl_loss(z_p, logs_q, m_p, logs_p, mask)
    # equals the same loss computed on the valid frames alone
    valid = [(0, 4), (1, 6)]
    total = sum(((logs_p[b, :, :n] - logs_q[b, :, :n] - 0.5
                  + 0.5 * (z_p[b, :, :n] - m_p[b, :, :n]) ** 2 * torch.exp(-2 * logs_p[b, :, :n])).sum())
                for b, n in valid)
    assert loss.item() == pytest.approx((total / 10).item(), rel=1e-6)
    loss.backward()
    for t in tensors:
        assert t.grad is not None and torch.isfinite(t.grad).all()
        assert torch.all(t.grad[0, :, 4:] == 0) and torch.all(t.grad[1, :, 6:] == 0)
        assert t.grad[0, :, :4].abs().sum() > 0
    assert torch.allclose(logs_q.grad[mask.expand(B, H, T) > 0], torch.tensor(-1 / 10))


def test_kl_half_inputs_give_float32():
    x = torch.zeros(1, 2, 3, dtype=torch.bfloat16)
    assert kl_loss(x, x, x, x, torch.ones(1, 1, 3, dtype=torch.bfloat16)).dtype == torch.float32


# --- resampling ---------------------------------------------------------------------------------

@pytest.mark.parametrize("orig,new", [(44100, 16000), (22050, 16000), (16000, 16000), (8000, 16000)])
def test_resample_sine(orig, new):
    seconds, freq = 0.5, 440.0
    t_in = torch.arange(int(orig * seconds), dtype=torch.float64) / orig
    wav = torch.sin(2 * math.pi * freq * t_in).float().unsqueeze(0).repeat(2, 1)
    out = Resample(orig, new)(wav)
    assert out.shape == (2, math.ceil(wav.shape[1] * new / orig))
    t_out = torch.arange(out.shape[1], dtype=torch.float64) / new
    expected = torch.sin(2 * math.pi * freq * t_out).float()
    edge = new // 50  # the filter sees zero padding near the ends
    assert torch.allclose(out[:, edge:-edge], expected[edge:-edge].expand(2, -1), atol=2e-3)


def test_resample_removes_content_above_the_new_nyquist():
    orig = 44100
    t = torch.arange(orig // 2, dtype=torch.float64) / orig
    wav = torch.sin(2 * math.pi * 12000 * t).float()[None]  # above 8 kHz: must vanish at 16 kHz
    out = resample(wav, orig, 16000)
    assert out[:, 400:-400].abs().max() < 0.02
    assert "kernel" not in Resample(orig, 16000).state_dict()


# --- WavLM --------------------------------------------------------------------------------------

class WavLMMock(nn.Module):
    """A tiny WavLM stand-in: frames 16 kHz audio by a strided conv and runs two linear layers,
    returning all 3 hidden states [B, F, C] like transformers' output_hidden_states=True."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.frame = nn.Conv1d(1, channels, kernel_size=40, stride=20)
        self.layers = nn.ModuleList([nn.Linear(channels, channels), nn.Linear(channels, channels)])
        self.dropout = nn.Dropout(0.5)
        self.inputs: list[torch.Tensor] = []

    def forward(self, input_values: torch.Tensor, output_hidden_states: bool = False):
        assert output_hidden_states and input_values.dim() == 2
        self.inputs.append(input_values)
        h = self.frame(input_values.unsqueeze(1)).transpose(1, 2)  # [B, F, C]
        hidden = [h]
        for layer in self.layers:
            h = torch.tanh(layer(self.dropout(h)))
            hidden.append(h)
        return SimpleNamespace(hidden_states=tuple(hidden))


class DiscriminatorMock(nn.Module):
    """A tiny WavLM-discriminator stand-in: [B, L * C, F] -> [B, F]."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.proj = nn.Conv1d(in_channels, 1, kernel_size=3, padding=1)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return self.proj(x).squeeze(1)


class ConstantDiscriminatorMock(nn.Module):
    """Scores every frame with one learnable value."""

    def __init__(self, value: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], x.shape[-1])


MODEL_SR = 22050


def make_loss(wd: nn.Module | None = None, channels: int = 4) -> WavLMLoss:
    torch.manual_seed(0)
    return WavLMLoss(WavLMMock(channels), wd if wd is not None else DiscriminatorMock(3 * channels),
                     MODEL_SR, 16000)


def audio(batch: int = 2, seconds: float = 0.25, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, int(MODEL_SR * seconds), generator=g) * 0.1


def test_wavlm_is_frozen_and_kept_in_eval():
    wl = make_loss()
    assert not wl.wavlm.training
    assert all(not p.requires_grad for p in wl.wavlm.parameters())
    assert all(p.requires_grad for p in wl.wd.parameters())
    wl.train()
    assert not wl.wavlm.training and wl.wd.training


def test_feature_loss_resamples_and_compares_layers():
    wl = make_loss()
    wav, y_rec = audio(seed=1), audio(seed=2).requires_grad_(True)
    assert wl(wav, wav).item() == 0.0
    wl.wavlm.inputs.clear()
    loss = wl(wav, y_rec)
    # WavLM saw 16 kHz audio
    assert [x.shape for x in wl.wavlm.inputs] == [(2, math.ceil(wav.shape[1] * 16000 / MODEL_SR))] * 2
    with torch.no_grad():
        real = wl.wavlm(input_values=Resample(MODEL_SR, 16000)(wav), output_hidden_states=True).hidden_states
        fake = wl.wavlm(input_values=Resample(MODEL_SR, 16000)(y_rec), output_hidden_states=True).hidden_states
    expected = sum(torch.mean(torch.abs(r - g)) for r, g in zip(real, fake))
    assert loss.dim() == 0 and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert y_rec.grad is not None and y_rec.grad.abs().sum() > 0
    assert all(p.grad is None for p in wl.wavlm.parameters())
    # [B, 1, T] audio is accepted too
    assert wl(wav.unsqueeze(1), y_rec.unsqueeze(1)).item() == pytest.approx(loss.item(), rel=1e-6)


def test_generator_and_discriminator_known_values():
    wl = make_loss(ConstantDiscriminatorMock(0.5))
    wav, y_rec = audio(seed=1), audio(seed=2)
    assert wl.generator(y_rec).item() == pytest.approx(0.25)  # (1 - 0.5)^2
    assert wl.discriminator(wav, y_rec).item() == pytest.approx(0.5)  # 0.25 + 0.25
    wl.wd.value.data.fill_(1.0)  # scores everything "real"
    assert wl.generator(y_rec).item() == 0.0
    assert wl.discriminator(wav, y_rec).item() == pytest.approx(1.0)


def test_discriminator_input_is_layers_stacked_on_channels():
    wl = make_loss()
    wav = audio()
    scores = wl.discriminator_forward(wav)
    (x,) = wl.wd.inputs
    hidden = wl.wavlm(input_values=Resample(MODEL_SR, 16000)(wav), output_hidden_states=True).hidden_states
    B, F, C = hidden[0].shape
    assert x.shape == (B, 3 * C, F) and scores.shape == (B, F)
    for layer in range(3):  # channels [layer * C, (layer + 1) * C) hold layer `layer`, transposed
        assert torch.allclose(x[:, layer * C:(layer + 1) * C], hidden[layer].transpose(1, 2))
    assert not x.requires_grad


def test_generator_gradients_reach_audio_and_discriminator():
    wl = make_loss()
    y_rec = audio(seed=3).requires_grad_(True)
    wl.generator(y_rec).backward()
    assert y_rec.grad is not None and y_rec.grad.abs().sum() > 0
    assert all(p.grad is not None for p in wl.wd.parameters())
    assert all(p.grad is None for p in wl.wavlm.parameters())


def test_discriminator_gradients_reach_discriminator_only():
    wl = make_loss()
    wav, y_rec = audio(seed=1), audio(seed=2).requires_grad_(True)
    loss = wl.discriminator(wav, y_rec)
    loss.backward()
    assert y_rec.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in wl.wd.parameters())
    assert all(p.grad is None for p in wl.wavlm.parameters())


def test_with_a_real_randomly_initialised_wavlm():
    """The transformers WavLMModel interface (tiny config, random weights: nothing downloaded)."""
    import transformers
    config = transformers.WavLMConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4),
                                      conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                                      num_conv_pos_embedding_groups=2, num_buckets=16)
    torch.manual_seed(0)
    wavlm = transformers.WavLMModel(config)
    wl = WavLMLoss(wavlm, DiscriminatorMock(16 * 3), MODEL_SR)
    wav, y_rec = audio(seed=1), audio(seed=2).requires_grad_(True)
    loss = wl(wav, y_rec) + wl.generator(y_rec)
    loss.backward()
    assert torch.isfinite(loss) and y_rec.grad.abs().sum() > 0
    d = wl.discriminator(wav, y_rec.detach())
    assert torch.isfinite(d) and wl.discriminator_forward(wav).dim() == 2

"""The networks of model/models.py on a tiny config: every variant trains (forward + backward) and
synthesises, the flows invert, the discriminators and helpers have the shapes the trainer needs."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from model import commons, transforms
from model.models import (VARIANTS, DurationDiscriminator, MultiPeriodDiscriminator, ResidualCouplingBlock,
                          StochasticDurationPredictor, SynthesizerTrn, TransformerCouplingBlock,
                          WavLMDiscriminator, build_discriminators, build_generator)
from tests.model.tiny_config import TINY

HOP = 16  # prod(upsample_rates) below



def _reference_maximum_path(neg_cent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain-Python MAS (upstream monotonic_align semantics), used only if model.monotonic_align
    is not there yet."""
    values, masks = neg_cent.detach().cpu().numpy().astype(np.float32), mask.cpu().numpy()
    paths = np.zeros_like(values)
    for b in range(values.shape[0]):
        t_y, t_x = int(masks[b, :, 0].sum()), int(masks[b, 0, :].sum())
        v = values[b].copy()
        for y in range(t_y):
            for x in range(max(0, t_x + y - t_y), min(t_x, y + 1)):
                v_cur = -1e9 if x == y else v[y - 1, x]
                v_prev = (0.0 if y == 0 else -1e9) if x == 0 else v[y - 1, x - 1]
                v[y, x] += max(v_prev, v_cur)
        index = t_x - 1
        for y in range(t_y - 1, -1, -1):
            paths[b, y, index] = 1
            if index != 0 and (index == y or v[y - 1, index] < v[y - 1, index - 1]):
                index -= 1
    return torch.from_numpy(paths).to(neg_cent.device, neg_cent.dtype)


@pytest.fixture(autouse=True, scope="module")
def _mas():
    try:
        import model.monotonic_align  # noqa: F401  (the real one, written alongside)
        yield
    except ImportError:
        stub = types.ModuleType("model.monotonic_align")
        stub.maximum_path = _reference_maximum_path
        sys.modules["model.monotonic_align"] = stub
        yield
        del sys.modules["model.monotonic_align"]


def _batch(bert_dim=384, b=2, t_x=7, t_y=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_lengths = torch.tensor([t_x, t_x - 2])[:b]
    y_lengths = torch.tensor([t_y, t_y - 5])[:b]
    x = torch.randint(1, TINY["n_vocab"], (b, t_x), generator=g)
    return dict(
        x=x, x_lengths=x_lengths,
        y=torch.rand(b, TINY["spec_channels"], t_y, generator=g), y_lengths=y_lengths,
        sid=torch.tensor([0, 2])[:b],
        tone=torch.randint(0, TINY["num_tones"], (b, t_x), generator=g),
        language=torch.randint(0, TINY["num_languages"], (b, t_x), generator=g),
        bert=torch.randn(b, bert_dim, t_x, generator=g), ja_bert=torch.randn(b, bert_dim, t_x, generator=g),
        en_bert=torch.randn(b, bert_dim, t_x, generator=g),
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_backward_every_variant(variant):
    torch.manual_seed(0)
    net_g = build_generator(variant, **{k: v for k, v in TINY.items()})
    assert net_g.variant == variant
    batch = _batch()
    (o, l_length, attn, ids_slice, x_mask, y_mask, (z, z_p, m_p, logs_p, m_q, logs_q),
     (hidden_x, logw, logw_, logw_sdp), g) = net_g(**batch)

    b, t_x, t_y, c = 2, 7, 24, TINY["inter_channels"]
    assert o.shape == (b, 1, TINY["segment_size"] * HOP)
    assert l_length.shape == (b,)
    assert attn.shape == (b, 1, t_y, t_x) and ids_slice.shape == (b,)
    assert x_mask.shape == (b, 1, t_x) and y_mask.shape == (b, 1, t_y)
    for t in (z, z_p, m_p, logs_p, m_q, logs_q):
        assert t.shape == (b, c, t_y)
    assert hidden_x.shape == (b, TINY["hidden_channels"], t_x) and g.shape == (b, TINY["gin_channels"], 1)
    # The alignment is a monotonic path covering every valid frame exactly once.
    assert torch.equal(attn.sum(-1).squeeze(1), y_mask.squeeze(1))
    assert torch.equal(attn.sum(2)[0, 0] > 0, x_mask[0, 0] > 0)
    # Duration outputs exist exactly where the variant has the predictor (upstream 2.3 tuple).
    flags = VARIANTS[variant]
    assert (logw is not None) == flags["use_dp"]
    assert (logw_sdp is not None) == (flags["use_sdp"] and flags["use_dp"])
    assert logw_.shape == (b, 1, t_x)

    kl = (logs_q.exp() ** 2 + (z_p - m_p) ** 2 / 2 * (-2 * logs_p).exp()).mean()  # any function of everything
    loss = o.abs().mean() + l_length.sum() + kl + (m_q ** 2).mean()
    assert torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in net_g.named_parameters()}
    assert all(gr is None or torch.isfinite(gr).all() for gr in grads.values())
    # (coupling `post` layers and spline projections start at zero, so what sits behind them gets
    # no gradient on the first step; these parameters must.)
    names = ["enc_p.emb.weight", "enc_q.pre.weight", "dec.conv_pre.weight", "emb_g.weight",
             "flow.flows.0.post.weight", "sdp.flows.1.proj.weight"] + (["dp.proj.weight"] if flags["use_dp"] else [])
    for name in names:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_variant_structure():
    full = build_generator("bert-vits2-2.3", **TINY)
    vits2 = build_generator("vits2", **TINY)
    vits = build_generator("vits", **TINY)
    assert full.enc_p.bert_proj.weight.shape == (16, 384, 1)  # bert_dim honoured
    assert not hasattr(vits2.enc_p, "bert_proj") and not hasattr(vits.enc_p, "bert_proj")
    assert isinstance(vits2.flow, TransformerCouplingBlock) and isinstance(vits.flow, ResidualCouplingBlock)
    assert hasattr(vits2.enc_p.encoder, "spk_emb_linear") and not hasattr(vits.enc_p.encoder, "spk_emb_linear")
    assert hasattr(vits, "sdp") and not hasattr(vits, "dp")
    assert vits2.use_noise_scaled_mas and not vits.use_noise_scaled_mas
    with torch.device("meta"):  # shapes only: the full-size MPD needn't be initialised
        assert set(build_discriminators("bert-vits2-2.3", 16, 8)) == {"D", "DUR", "WD"}
        assert set(build_discriminators("vits2", 16, 8)) == {"D", "DUR"}
        assert set(build_discriminators("vits", 16, 8)) == {"D"}
    with pytest.raises(ValueError, match="requires"):
        build_generator("vits", use_transformer_flow=True, **TINY)
    with pytest.raises(ValueError, match="unknown variant"):
        build_generator("vits3", **TINY)


def test_mas_noise_scale_anneals():
    net_g = build_generator("vits2", **TINY)
    assert net_g.current_mas_noise_scale == pytest.approx(0.01)
    assert net_g.update_mas_noise_scale(1000) == pytest.approx(0.01 - 2e-3)
    assert net_g.update_mas_noise_scale(10 ** 6) == 0.0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_infer_every_variant(variant):
    torch.manual_seed(0)
    net_g = build_generator(variant, **TINY).eval()
    batch = _batch()
    for k in ("y", "y_lengths"):
        batch.pop(k)
    if variant != "bert-vits2-2.3":  # BERT features are optional without projections
        for k in ("bert", "ja_bert", "en_bert"):
            batch.pop(k)
    with torch.no_grad():
        o, attn, y_mask, (z, z_p, m_p, logs_p) = net_g.infer(**batch, sdp_ratio=0.5, length_scale=1.2)
    t_y = y_mask.shape[-1]
    assert o.shape == (2, 1, t_y * HOP) and attn.shape == (2, 1, t_y, 7)
    assert z.shape == z_p.shape == m_p.shape == logs_p.shape == (2, TINY["inter_channels"], t_y)
    assert torch.isfinite(o).all() and o.abs().max() <= 1
    # every frame of the predicted lengths is assigned to exactly one token
    assert torch.equal(attn.sum(-1).squeeze(1), y_mask.squeeze(1))
    # max_len cuts the decoded frames
    with torch.no_grad():
        full = net_g.infer(**batch, noise_scale=0, noise_scale_w=0)[0]
        cut = net_g.infer(**batch, noise_scale=0, noise_scale_w=0, max_len=3)[0]
    assert cut.shape[-1] == min(3, full.shape[-1] // HOP) * HOP


def test_infer_deterministic_without_noise():
    net_g = build_generator(**TINY).eval()
    batch = {k: v[:1] for k, v in _batch().items() if k not in ("y", "y_lengths")}
    with torch.no_grad():
        a = net_g.infer(**batch, noise_scale=0, noise_scale_w=0)[0]
        b = net_g.infer(**batch, noise_scale=0, noise_scale_w=0)[0]
    assert torch.equal(a, b)


def test_reference_encoder_when_no_speakers():
    net_g = SynthesizerTrn(**{**TINY, "n_speakers": 0})
    assert not hasattr(net_g, "emb_g") and hasattr(net_g, "ref_enc")
    batch = _batch()
    out = net_g(**batch)
    assert out[-1].shape == (2, TINY["gin_channels"], 1)
    with torch.no_grad():
        o = net_g.eval().infer(**{k: v for k, v in batch.items() if k != "y_lengths"})[0]
    assert torch.isfinite(o).all()


@pytest.mark.parametrize("kind", ["transformer", "transformer_shared", "residual"])
def test_flows_invert(kind):
    torch.manual_seed(0)
    if kind == "residual":
        flow = ResidualCouplingBlock(16, 16, 5, 1, 2, gin_channels=8)
    else:
        flow = TransformerCouplingBlock(16, 16, 32, 2, 3, 5, 0.1, n_flows=2, gin_channels=8,
                                        share_parameter=kind == "transformer_shared")
    for p in flow.parameters():  # post layers start at zero (identity); make the test meaningful
        torch.nn.init.normal_(p, std=0.1) if p.dim() > 1 else None
    flow.eval()
    x = torch.randn(2, 16, 11)
    mask = commons.sequence_mask(torch.tensor([11, 8]), 11).unsqueeze(1).float()
    g = torch.randn(2, 8, 1)
    with torch.no_grad():
        y = flow(x * mask, mask, g=g)
        back = flow(y, mask, g=g, reverse=True)
    assert not torch.allclose(y, x * mask, atol=1e-3)
    torch.testing.assert_close(back, x * mask, atol=1e-4, rtol=1e-4)


def test_stochastic_duration_predictor():
    torch.manual_seed(0)
    sdp = StochasticDurationPredictor(16, 192, 3, 0.5, 4, gin_channels=8)
    for p in sdp.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, g = torch.randn(2, 16, 9), torch.randn(2, 8, 1)
    mask = commons.sequence_mask(torch.tensor([9, 6]), 9).unsqueeze(1).float()
    w = torch.randint(1, 6, (2, 1, 9)).float() * mask
    nll = sdp(x, mask, w, g=g)
    assert nll.shape == (2,) and torch.isfinite(nll).all()
    nll.sum().backward()
    logw = sdp(x, mask, g=g, reverse=True, noise_scale=0.8)
    assert logw.shape == (2, 1, 9) and torch.isfinite(logw).all()


def test_spline_inverts():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 50) * 3  # some inputs beyond the tail bound: identity there
    widths, heights, derivs = torch.randn(3, 1, 50, 10), torch.randn(3, 1, 50, 10), torch.randn(3, 1, 50, 9)
    y, logdet = transforms.piecewise_rational_quadratic_transform(
        x, widths, heights, derivs, tails="linear", tail_bound=5.0)
    back, inv_logdet = transforms.piecewise_rational_quadratic_transform(
        y, widths, heights, derivs, inverse=True, tails="linear", tail_bound=5.0)
    torch.testing.assert_close(back, x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(inv_logdet, -logdet, atol=1e-4, rtol=1e-4)
    outside = x.abs() > 5
    assert torch.equal(y[outside], x[outside])


def test_generate_path_and_masks():
    mask = commons.sequence_mask(torch.tensor([3, 1]), 4)
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    dur = torch.tensor([[[2.0, 1.0, 3.0]]])
    path = commons.generate_path(dur, torch.ones(1, 1, 6, 3))
    assert path[0, 0].argmax(-1).tolist() == [0, 0, 1, 2, 2, 2]
    x = torch.arange(2 * 3 * 10).view(2, 3, 10).float()
    seg = commons.slice_segments(x, torch.tensor([0, 4]), 5)
    assert torch.equal(seg[1], x[1, :, 4:9]) and torch.equal(seg[0], x[0, :, :5])


def test_discriminators_shapes():
    torch.manual_seed(0)
    y, y_hat = torch.randn(2, 1, 300), torch.randn(2, 1, 300)
    mpd = MultiPeriodDiscriminator()
    y_d_rs, y_d_gs, fmap_rs, fmap_gs = mpd(y, y_hat)
    assert len(y_d_rs) == len(y_d_gs) == 6 and all(len(f) in (6, 7) for f in fmap_rs)
    assert all(r.shape == g.shape and r.dim() == 2 for r, g in zip(y_d_rs, y_d_gs))

    dur = DurationDiscriminator(16, 16, 3, 0.1, gin_channels=8)
    x, g = torch.randn(2, 16, 7), torch.randn(2, 8, 1)
    mask = torch.ones(2, 1, 7)
    p_r, p_g = dur(x, mask, torch.randn(2, 1, 7), torch.randn(2, 1, 7), g)
    assert p_r.shape == p_g.shape == (2, 7, 1) and ((p_r > 0) & (p_r < 1)).all()

    wd = WavLMDiscriminator(slm_hidden=12, slm_layers=3, initial_channel=8)
    assert wd(torch.randn(2, 36, 50)).shape == (2, 50)


def test_spectral_norm_discriminator_runs():
    wd = WavLMDiscriminator(slm_hidden=12, slm_layers=3, initial_channel=8, use_spectral_norm=True)
    assert any("parametrizations.weight.0._u" in k for k in wd.state_dict())
    assert wd(torch.randn(2, 36, 50)).shape == (2, 50)

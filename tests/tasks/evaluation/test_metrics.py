"""Objective synthesis metrics on real speech (LJSpeech clips) and on hand-made sequences."""
import math
import warnings

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from tasks.evaluation.metrics import (aggregate, default_hop, dtw_path, dtw_path_reference, f0_contour, f0_metrics,
                           length_ratio, mcd_dtw, mcd_frames, mel_alpha, mel_cepstrum, utterance_metrics)

SHIFT_CENTS = 1200 * math.log2(100 / 89)  # resampling by 89/100 and playing at the same rate: +201.7 c


@pytest.fixture(scope="module")
def clips(real_speech):
    """Three short LJSpeech utterances (1.8-2.6 s, 22.05 kHz) as float64."""
    wavs = real_speech / "en_ljspeech" / "wavs"
    out = {}
    for name in ("LJ001-0002", "LJ001-0008", "LJ001-0013"):
        y, sr = sf.read(wavs / f"{name}.wav", dtype="float64")
        assert sr == 22050
        out[name] = y
    return out, 22050


@pytest.fixture(scope="module")
def stretched(clips):
    import librosa

    (wavs, sr) = clips
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {rate: librosa.effects.time_stretch(wavs["LJ001-0002"], rate=rate) for rate in (0.8, 1.25)}


# ------------------------------------------------------------------------------------------------ DTW
def test_dtw_repeats_the_frame_that_the_other_sequence_holds_longer():
    a = np.array([0.0, 1.0, 2.0, 3.0])
    b = np.array([0.0, 1.0, 1.0, 2.0, 3.0])
    expected = [[0, 0], [1, 1], [1, 2], [2, 3], [3, 4]]
    assert dtw_path(a, b).tolist() == expected
    assert dtw_path(b, a).tolist() == [[j, i] for i, j in expected]


def test_dtw_of_identical_sequences_is_the_diagonal_even_through_repeated_frames():
    a = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [1.0, 2.0], [3.0, 1.0]])
    assert dtw_path(a, a).tolist() == [[i, i] for i in range(5)]


def test_dtw_path_compresses_a_pause_in_one_sequence():
    a = np.array([5.0, 0.0, 0.0, 0.0, 5.0])
    b = np.array([5.0, 0.0, 5.0])
    assert dtw_path(a, b).tolist() == [[0, 0], [1, 1], [2, 1], [3, 1], [4, 2]]


def test_dtw_matches_the_plain_python_reference_on_random_sequences():
    rng = np.random.default_rng(7)
    for n, m, d in [(1, 1, 3), (1, 6, 2), (7, 1, 2), (13, 9, 4), (20, 31, 3)]:
        a, b = rng.normal(size=(n, d)), rng.normal(size=(m, d))
        path = dtw_path(a, b)
        np.testing.assert_array_equal(path, dtw_path_reference(a, b))
        assert path[0].tolist() == [0, 0] and path[-1].tolist() == [n - 1, m - 1]
        steps = {tuple(s) for s in np.diff(path, axis=0).tolist()}
        assert steps <= {(1, 1), (1, 0), (0, 1)}


# ------------------------------------------------------------------------------------- mel-cepstrum
def test_all_pass_constant_fits_the_mel_scale_like_sptk():
    assert mel_alpha(16000) == pytest.approx(0.41, abs=0.005)
    assert mel_alpha(22050) == pytest.approx(0.455, abs=0.005)
    assert mel_alpha(44100) == pytest.approx(0.544, abs=0.005)
    assert mel_alpha(48000) == pytest.approx(0.554, abs=0.005)


def test_cepstra_and_f0_share_frames_and_gain_only_moves_c0(clips):
    (wavs, sr) = clips
    y = wavs["LJ001-0002"]
    c = mel_cepstrum(y, sr, order=24)
    f0, voiced = f0_contour(y, sr)
    assert c.shape == (1 + len(y) // default_hop(sr), 25) == (len(f0), 25) and len(voiced) == len(f0)
    quiet = mel_cepstrum(0.25 * y, sr, order=24)
    np.testing.assert_allclose(quiet[:, 1:], c[:, 1:], atol=1e-9)
    np.testing.assert_allclose(quiet[:, 0], c[:, 0] + math.log(0.25), atol=1e-9)
    assert mcd_dtw(y, 0.25 * y, sr) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------------------- F0 extractor
def test_f0_of_a_gliding_harmonic_tone_is_exact_to_a_few_cents_and_noise_is_unvoiced():
    sr = 22050
    t = np.arange(int(1.5 * sr)) / sr
    f_true = 120.0 * 2 ** t  # 120 -> 339 Hz glide, an octave per second
    phase = 2 * np.pi * np.cumsum(f_true) / sr
    tone = sum(0.3 / k * np.sin(k * phase) for k in range(1, 8))
    f0, voiced = f0_contour(tone, sr)
    frames = np.arange(len(f0)) * default_hop(sr)
    inner = (frames > 0.1 * sr) & (frames < 1.4 * sr)
    assert voiced[inner].all()
    err = 1200 * np.log2(f0[inner] / f_true[frames[inner]])
    assert np.max(np.abs(err)) < 5.0
    coarse, _ = f0_contour(tone, sr, refine=False)  # pYIN alone: quantised to 25-cent bins
    coarse_err = 1200 * np.log2(coarse[inner] / f_true[frames[inner]])
    assert np.sqrt(np.mean(err ** 2)) < 0.5 * np.sqrt(np.mean(coarse_err ** 2))
    noise = np.random.default_rng(0).normal(0, 0.1, sr)
    f0_noise, v_noise = f0_contour(noise, sr)
    assert v_noise.mean() < 0.1 and np.all(f0_noise[~v_noise] == 0)


# ------------------------------------------------------------------------------------- real speech
def test_identical_audio_scores_zero_distortion_zero_f0_error_and_zero_vuv_error(clips):
    (wavs, sr) = clips
    y = wavs["LJ001-0002"]
    m = utterance_metrics(y, y.copy(), sr)
    assert m["mcd_db"] == 0.0 and m["f0_rmse_cents"] == 0.0 and m["vuv_error"] == 0.0
    assert m["voiced_pairs"] > 0.5 * len(y) / default_hop(sr)  # mostly voiced speech was compared
    assert m["length_ratio"] == 1.0
    assert f0_metrics(y, y, sr, align="time")["f0_rmse_cents"] == 0.0


def test_pitch_shifted_copy_has_an_f0_rmse_close_to_the_shift(clips):
    (wavs, sr) = clips
    y = wavs["LJ001-0002"]
    shifted = resample_poly(y, 89, 100)  # every frequency x 100/89, 11 % faster: DTW must align it
    m = utterance_metrics(y, shifted, sr)
    assert m["f0_rmse_cents"] == pytest.approx(SHIFT_CENTS, abs=20.0)
    assert m["vuv_error"] < 0.15 and m["voiced_pairs"] > 100
    assert m["length_ratio"] == pytest.approx(0.89, abs=1e-3)


def test_time_stretched_copy_is_aligned_by_dtw(clips, stretched):
    (wavs, sr) = clips
    y = wavs["LJ001-0002"]
    other = mcd_dtw(y, wavs["LJ001-0008"], sr)
    c_ref = mel_cepstrum(y, sr)[:, 1:]
    for rate, s in stretched.items():
        aligned = mcd_dtw(y, s, sr)
        unaligned = mcd_frames(c_ref, mel_cepstrum(s, sr)[:, 1:])  # frame t vs frame t, common length
        assert aligned < 0.5 * unaligned, (rate, aligned, unaligned)
        # much nearer to the identical copy (0 dB) than to a different utterance
        assert aligned < 0.4 * other, (rate, aligned, other)
        assert length_ratio(y, s) == pytest.approx(1 / rate, rel=0.01)
        # F0 compared along the DTW path beats frame t vs frame t (same contours, other pairs)
        f0, f0_time = f0_metrics(y, s, sr), f0_metrics(y, s, sr, align="time")
        assert f0["f0_rmse_cents"] < min(80.0, f0_time["f0_rmse_cents"]), (rate, f0, f0_time)
        assert f0["vuv_error"] < 0.6 * f0_time["vuv_error"], (rate, f0, f0_time)


def test_a_different_utterance_is_far_worse_than_the_stretched_copy(clips, stretched):
    (wavs, sr) = clips
    y = wavs["LJ001-0002"]
    stretched_mcd = max(mcd_dtw(y, s, sr) for s in stretched.values())
    for name in ("LJ001-0008", "LJ001-0013"):
        assert mcd_dtw(y, wavs[name], sr) > 2.0 * stretched_mcd


# ------------------------------------------------------------------------------------------ aggregate
def test_aggregate_gives_means_and_counts_overall_per_language_and_per_speaker_within_language():
    rows = [
        {"id": "a", "language": "en", "speaker": "lj", "mcd_db": 4.0, "f0_rmse_cents": 30.0},
        {"id": "b", "language": "en", "speaker": "lj", "mcd_db": 6.0, "f0_rmse_cents": float("nan")},
        {"id": "c", "language": "en", "speaker": "vctk", "mcd_db": 8.0, "f0_rmse_cents": 50.0},
        {"id": "d", "language": "zh", "speaker": "lj", "mcd_db": 2.0, "f0_rmse_cents": 10.0},
    ]
    out = aggregate(rows)
    assert set(out) == {"overall", "language", "language/speaker"}
    assert out["overall"] == {"count": 4, "mcd_db": 5.0, "f0_rmse_cents": 30.0}  # NaN left out
    assert out["language"]["en"] == {"count": 3, "mcd_db": 6.0, "f0_rmse_cents": 40.0}
    assert out["language"]["zh"]["count"] == 1
    assert set(out["language/speaker"]) == {"en/lj", "en/vctk", "zh/lj"}  # "lj" twice, not merged
    assert out["language/speaker"]["en/lj"] == {"count": 2, "mcd_db": 5.0, "f0_rmse_cents": 30.0}
    only_nan = aggregate([{"language": "en", "speaker": "x", "f0_rmse_cents": float("nan")}])
    assert only_nan["overall"]["f0_rmse_cents"] is None  # JSON-safe
    assert aggregate(rows, by=("speaker",))["speaker"]["lj"]["count"] == 3

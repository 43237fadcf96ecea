"""tasks/inference/convert.py on random-init HiFi-VC nets (plumbing, not quality): what input is
accepted and how (any rate from 8 kHz, a bounded reference window), what is refused with the file
and the reason, what `pitch` does under each F0 normalisation, and the export (hifivc.ts with the
seminar's interface, parity recorded, the export folder loads back). Real recordings from
tests/data/speech throughout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.hifivc import OUTPUT_RATE, yin_lf0
from tasks.inference.convert import (EXPORT_CONFIG, EXPORT_TS, ConvertError, Converter, build_hifivc, export_hifivc,
                                     load_converter, probe_inputs)
from tasks.prep.audio import decode, resample

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

SPEECH = Path(__file__).resolve().parents[2] / "data" / "speech"
CONFIG = dict(d_model=32, n_heads=2, n_layers=2, ff_mult=2, conv_kernel=7, p_dropout=0.1, n_symbols=12, f0_channels=8,
              speaker_dim=16, upsample_initial_channel=32, resblock="2", resblock_kernel_sizes=[3],
              resblock_dilation_sizes=[[1, 3]], disc_divisor=16)


def _converter(**overrides) -> Converter:
    torch.manual_seed(0)
    config = {**CONFIG, **overrides}
    return Converter(build_hifivc(config).remove_weight_norm().eval(), config, "random-init", {"run_id": "vc-test"})


def _wav(path: str) -> tuple[np.ndarray, int]:
    p = SPEECH / path
    return decode(p.read_bytes(), p.name)


@pytest.fixture(scope="module")
def lj():
    return _wav("en_ljspeech/wavs/LJ001-0002.wav")


@pytest.fixture(scope="module")
def aishell():
    return _wav("zh_aishell3/wavs/SSB00050112.wav")


def test_random_init_conversion_of_real_speech_is_as_long_as_the_source_at_24k(lj, aishell):
    wav, report = _converter().convert(*lj, *aishell)
    assert wav.dtype == np.float32 and np.isfinite(wav).all()
    assert abs(len(wav) - len(lj[0]) / lj[1] * OUTPUT_RATE) <= 2
    assert report["seconds"] == round(len(wav) / OUTPUT_RATE, 3) and report["pitch"] == "match"
    assert report["reference"]["speech_seconds"] >= 1.0 and report["notes"] == []


def test_a_source_at_8_khz_is_upsampled_and_the_report_says_what_it_lacks(lj, aishell):
    src8 = resample(lj[0], lj[1], 8000)
    wav, report = _converter().convert(src8, 8000, *aishell, src_name="low.wav")
    assert abs(len(wav) - len(src8) / 8000 * OUTPUT_RATE) <= 3
    assert report["notes"] and "low.wav: 8000 Hz" in report["notes"][0] and "4000 Hz" in report["notes"][0]


def test_below_8_khz_nan_and_empty_audio_are_refused_naming_the_file(lj, aishell):
    conv = _converter()
    with pytest.raises(ConvertError, match="phone.wav: 6000 Hz audio; conversion needs at least 8000 Hz"):
        conv.convert(resample(lj[0], lj[1], 6000), 6000, *aishell, src_name="phone.wav")
    bad = lj[0].copy()
    bad[100] = np.nan
    with pytest.raises(ConvertError, match="s.wav: the audio holds NaN"):
        conv.convert(bad, lj[1], *aishell, src_name="s.wav")
    with pytest.raises(ConvertError, match="r.wav: expected mono audio samples"):
        conv.convert(*lj, np.zeros(0, np.float32), 16000, ref_name="r.wav")


def test_a_stereo_array_is_averaged_to_mono_as_decode_does(lj, aishell):
    conv = _converter()
    stereo = np.stack([aishell[0], aishell[0]], 1)
    a, _ = conv.convert(*lj, stereo, aishell[1])
    b, _ = conv.convert(*lj, *aishell)
    assert np.array_equal(a, b)


def test_a_silent_or_short_reference_is_refused_with_its_seconds_of_voice(lj, aishell):
    conv = _converter()
    with pytest.raises(ConvertError, match=r"quiet.wav: 0.00 s of voice in 3.00 s of audio; a reference needs at least 1 s"):
        conv.convert(*lj, np.zeros(48000, np.float32), 16000, ref_name="quiet.wav")
    short = aishell[0][: int(0.6 * aishell[1])]
    with pytest.raises(ConvertError, match=r"short.wav: 0\.\d\d s of voice in 0.60 s"):
        conv.convert(*lj, short, aishell[1], ref_name="short.wav")


def test_a_source_too_short_or_without_voice_is_refused(lj, aishell):
    conv = _converter()
    with pytest.raises(ConvertError, match=r"s.wav: 0.10 s is too short to convert"):
        conv.convert(lj[0][: lj[1] // 10], lj[1], *aishell, src_name="s.wav")
    with pytest.raises(ConvertError, match="s.wav: no voiced frame"):
        conv.convert(np.zeros(32000, np.float32), 16000, *aishell, src_name="s.wav")


def test_a_reference_over_30_s_uses_its_most_voiced_30_s_window(lj, aishell):
    ref, sr = aishell
    long_ref = np.concatenate([np.zeros(40 * sr, np.float32), ref, np.zeros(40 * sr, np.float32)])
    _, report = _converter().convert(*lj, long_ref, sr)
    start, end = report["reference"]["used"]
    assert end - start == pytest.approx(30.0, abs=0.02)
    voice_at = 40.0, 40.0 + len(ref) / sr
    assert start <= voice_at[0] and end >= voice_at[1] - 0.05  # the window holds the speech
    assert report["reference"]["speech_seconds"] >= 1.0 and report["reference"]["seconds"] > 80


def test_pitch_follow_is_refused_when_the_model_normalises_f0_per_utterance(lj, aishell):
    with pytest.raises(ConvertError, match="normalises F0 per utterance"):
        _converter().convert(*lj, *aishell, pitch="follow")
    with pytest.raises(ConvertError, match="pitch: one of"):
        _converter().convert(*lj, *aishell, pitch="up")


def test_with_absolute_f0_match_shifts_the_sources_voiced_lf0_to_the_references_mean(lj, aishell):
    conv = _converter(f0_norm="none")
    _, _, lf0_follow, follow = conv.prepare(*lj, *aishell, pitch="follow")
    _, _, lf0_match, match = conv.prepare(*lj, *aishell, pitch="match")
    voiced = lf0_follow > 0
    assert torch.equal(voiced, lf0_match > 0)
    shift = (lf0_match - lf0_follow)[voiced]
    assert float(shift.std()) < 1e-5 and "pitch_shift_semitones" not in follow
    ref16 = torch.from_numpy(resample(aishell[0], aishell[1], 16000))[None]
    ref_lf0 = yin_lf0(ref16)[0]
    want = float(ref_lf0[ref_lf0 > 0].mean() - lf0_follow[voiced].mean())
    assert float(shift.mean()) == pytest.approx(want, abs=0.02)
    assert match["pitch_shift_semitones"] == pytest.approx(want * 12 / np.log(2), abs=0.3)
    a, _ = conv.convert(*lj, *aishell, pitch="follow")
    b, _ = conv.convert(*lj, *aishell, pitch="match")
    assert not np.allclose(a, b)  # the model sees absolute F0


def test_the_export_writes_hifivc_ts_with_parity_and_the_folder_loads_back(tmp_path, lj, aishell):
    conv = _converter()
    config = export_hifivc(conv, tmp_path)
    assert config["parity"]["forward_max_abs_diff"] <= 1e-4 and config["parity"]["preprocess_max_abs_diff"] <= 1e-4
    assert config["onnx"]["written"] is False and "MultiheadAttention" in config["onnx"]["reason"]
    assert json.loads((tmp_path / EXPORT_CONFIG).read_text())["files"]["torchscript"]["path"] == EXPORT_TS
    m = torch.jit.load(str(tmp_path / EXPORT_TS))
    src16 = torch.from_numpy(resample(lj[0], lj[1], 16000))[None]
    ref24 = torch.from_numpy(resample(aishell[0], aishell[1], 24000))[None]
    with torch.no_grad():
        mel_ref, lf0 = m.preprocess(src16, ref24)
        out = m(src16, mel_ref, lf0)
        assert mel_ref.shape == (1, 80, ref24.shape[1] // 256) and lf0.shape == (1, src16.shape[1] // 160)
        assert out.shape == (1, -(-(src16.shape[1] // 160) // 2) * 480)
        assert (out - conv.model(src16, mel_ref, lf0)).abs().max() <= 1e-4
    again = load_converter(tmp_path)
    a, _ = again.convert(*lj, *aishell)
    b, _ = conv.convert(*lj, *aishell)
    assert again.info["kind"] == "export" and again.info["run_id"] == "vc-test" and np.abs(a - b).max() < 1e-5


def test_an_export_whose_weights_changed_is_refused(tmp_path):
    export_hifivc(_converter(), tmp_path)
    weights = tmp_path / "hifivc.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ConvertError, match="sha256 differs"):
        load_converter(tmp_path)


def test_the_probe_inputs_are_voiced_so_parity_covers_the_f0_path():
    _, mel, lf0 = probe_inputs(_converter().model)
    assert (lf0 > 0).float().mean() > 0.8 and mel.shape[1] == 80


def test_a_missing_model_or_an_off_record_says_what_it_is(tmp_path):
    with pytest.raises(ConvertError, match="no such conversion model"):
        load_converter(tmp_path / "nothing")
    record = tmp_path / "vc.json"
    record.write_text(json.dumps({"enabled": False, "reason": "params vc.enabled is false"}))
    with pytest.raises(ConvertError, match="the vc stage is off"):
        load_converter(record)


def save_vc_bundle(storage_uri: str, run_id: str = "vc-random", step: int = 3) -> str:
    """A random-init HiFi-VC bundle as the vc trainer saves one (nets HiFiVC + D, the model config,
    the encoder's lineage); returns its URI."""
    from model.models import MultiPeriodDiscriminator
    from tasks.core.checkpoints import CheckpointStore
    from tasks.core.storage import open_storage

    torch.manual_seed(0)
    model = build_hifivc(CONFIG)
    state = {"step": step, "model_config": CONFIG, "encoder": {"run_id": "asr-random", "step": 2},
             "sample_rate": OUTPUT_RATE}
    CheckpointStore(open_storage(storage_uri), run_id).save(
        step, {"HiFiVC": model.state_dict(), "D": MultiPeriodDiscriminator(divisor=16).state_dict()}, state,
        {"val_loss": 1.0}, {"git_commit": None})
    return f"{storage_uri}/runs/{run_id}/step_{step:08d}"


def test_a_vc_bundle_loads_with_weight_norm_baked_and_equals_its_eager_model(tmp_path, lj, aishell):
    uri = save_vc_bundle(f"file://{tmp_path}/storage")
    conv = load_converter(uri)
    assert conv.info["run_id"] == "vc-random" and conv.info["step"] == 3 and conv.info["encoder"]["run_id"] == "asr-random"
    assert not any(hasattr(m, "parametrizations") for m in conv.model.modules())
    torch.manual_seed(0)
    eager = build_hifivc(CONFIG).eval()  # weight norm still on: the same numbers
    src16 = torch.from_numpy(resample(lj[0], lj[1], 16000))[None]
    wav16, mel_ref, lf0, _ = conv.prepare(*lj, *aishell)
    with torch.no_grad():
        assert (conv.model(wav16, mel_ref, lf0) - eager(src16, mel_ref, lf0)).abs().max() < 1e-4
    record = tmp_path / "vc.json"
    record.write_text(json.dumps({"enabled": True, "run_id": "vc-random", "checkpoint": {"uri": uri, "step": 3}}))
    assert load_converter(record).info["checkpoint"] == conv.info["checkpoint"]


def test_a_source_over_a_minute_is_refused_before_the_model_runs(lj, aishell):
    x, sr = lj
    long = np.tile(x, int(61 * sr / len(x)) + 1)
    with pytest.raises(ConvertError, match=r"long.wav: \d+\.\d s is longer than 60 s; convert it in pieces"):
        _converter().convert(long, sr, *aishell, src_name="long.wav")


def test_matching_the_pitch_of_an_unvoiced_reference_is_refused(lj):
    noise = np.random.default_rng(0).normal(0, 0.1, 3 * 16000).astype(np.float32)  # speech-loud, never voiced
    with pytest.raises(ConvertError, match="noise.wav: no voiced frame to match the pitch to"):
        _converter(f0_norm="none").convert(*lj, noise, 16000, pitch="match", ref_name="noise.wav")

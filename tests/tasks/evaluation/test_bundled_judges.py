"""The bundled judges (DNSMOS, GE2E, pocketsphinx) with their real weights, on real recorded speech
(tests/data/speech: LJSpeech 22.05 kHz, AISHELL-3 44.1 kHz, Common Voice ja 16 kHz): they rank speech
as a listener would, are fed audio at their own rate, and judge the synthesis, not the reference."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tasks.core.config import EvalModelsConfig
from tasks.evaluation.judges import DnsMos, Ge2e, Judges, PocketSphinx, cosine, error_rates
from tasks.prep.audio import resample

pytestmark = pytest.mark.slow  # real judges' weights on real speech: seconds to a minute each

# English clips whose transcripts hold no digits or abbreviations (what is said is what is written)
EN = ["LJ001-0002", "LJ001-0003", "LJ001-0005", "LJ001-0008"]


def clip(real_speech: Path, corpus: str, utt: str) -> tuple[np.ndarray, int]:
    wav, sr = sf.read(real_speech / corpus / "wavs" / f"{utt}.wav", dtype="float32")
    return wav, sr


def transcript(real_speech: Path, corpus: str, utt: str) -> str:
    for line in (real_speech / corpus / "metadata.csv").read_text(encoding="utf-8").splitlines():
        if line.split("|")[0] == utt:
            return line.split("|")[1]
    raise KeyError(utt)


def with_noise(wav: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(wav)).astype(np.float32)
    noise *= np.sqrt(np.mean(wav ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    return np.clip(wav + noise, -1.0, 1.0)


@pytest.fixture(scope="module")
def dnsmos():
    return DnsMos()


@pytest.fixture(scope="module")
def ge2e():
    return Ge2e()


@pytest.fixture(scope="module")
def sphinx():
    return PocketSphinx()


def test_dnsmos_rates_clean_recordings_above_themselves_with_white_noise_at_5_db_snr(real_speech, dnsmos):
    clips = [clip(real_speech, "en_ljspeech", u) for u in EN[:2]] + [
        clip(real_speech, "zh_aishell3", "SSB00050112"), clip(real_speech, "ja_commonvoice", "common_voice_ja_38833628_16k")]
    for wav, sr in clips:
        clean, noisy = dnsmos.mos(wav, sr), dnsmos.mos(with_noise(wav, 5.0), sr)
        assert 1.0 <= noisy < clean <= 5.0
        assert clean - noisy > 0.7, (clean, noisy)  # measured: 1.0-1.7 apart


def test_ge2e_finds_the_same_speakers_other_utterance_more_similar_than_other_speakers(real_speech, ge2e):
    a, b = (ge2e.embed(*clip(real_speech, "en_ljspeech", u)) for u in EN[:2])
    same = cosine(a, b)
    others = [cosine(a, ge2e.embed(*clip(real_speech, corpus, utt)))
              for corpus, utt in [("zh_aishell3", "SSB00050112"), ("zh_aishell3", "SSB00090181"),
                                  ("ja_commonvoice", "common_voice_ja_38833628_16k"),
                                  ("ja_commonvoice", "common_voice_ja_38843402_16k")]]
    assert same > 0.75 and same > max(others) + 0.1, (same, others)
    zh1, zh2 = (ge2e.embed(*clip(real_speech, "zh_aishell3", u)) for u in ("SSB00050112", "SSB00090181"))
    assert cosine(zh1, zh2) < same  # two AISHELL-3 speakers are less alike than LJ with herself


def test_pocketsphinx_cer_of_clean_english_is_well_below_that_of_the_noisy_recordings(real_speech, sphinx):
    clean, noisy = [], []
    for utt in EN:
        wav, sr = clip(real_speech, "en_ljspeech", utt)
        text = transcript(real_speech, "en_ljspeech", utt)
        clean.append(error_rates(text, sphinx.transcribe(wav, sr))["cer"])
        noisy.append(error_rates(text, sphinx.transcribe(with_noise(wav, 5.0), sr))["cer"])
    assert np.mean(clean) < 0.3 and np.mean(clean) < 0.5 * np.mean(noisy), (clean, noisy)


def test_judges_resample_to_16_khz_so_22_05_and_44_1_khz_input_scores_the_same(real_speech, dnsmos, ge2e, sphinx):
    wav, sr = clip(real_speech, "en_ljspeech", EN[0])  # 22.05 kHz
    up = resample(wav, sr, 44100)
    assert abs(dnsmos.mos(wav, sr) - dnsmos.mos(up, 44100)) < 0.05
    assert cosine(ge2e.embed(wav, sr), ge2e.embed(up, 44100)) > 0.99
    assert sphinx.transcribe(wav, sr) == sphinx.transcribe(up, 44100)
    # fed without resampling (22.05 kHz samples read as 16 kHz: slowed down, pitch lowered) the
    # scores move, so the test above would catch a missing resample
    text = transcript(real_speech, "en_ljspeech", EN[0])
    assert error_rates(text, sphinx.transcribe(wav, 16000))["cer"] > error_rates(text, sphinx.transcribe(wav, sr))["cer"] + 0.2


def test_the_synthesis_not_the_reference_is_transcribed_and_rated(real_speech):
    judges = Judges(EvalModelsConfig(), Path("."))
    said, other = (clip(real_speech, "en_ljspeech", u) for u in EN[:2])
    text = transcript(real_speech, "en_ljspeech", EN[0])
    sr = said[1]
    right = judges.score(other[0], said[0], sr, text, "en")   # the synthesis says the text
    wrong = judges.score(said[0], other[0], sr, text, "en")   # the reference says it, the synthesis does not
    assert right["cer"] < 0.3 and wrong["cer"] > 0.6, (right, wrong)
    assert right["mos"] == wrong["mos_reference"] and right["mos_reference"] == wrong["mos"]
    noisy = judges.score(said[0], with_noise(said[0], 5.0), sr, text, "en")
    assert noisy["mos"] < noisy["mos_reference"] - 0.7 and noisy["speaker_similarity"] < 0.99
    assert "cer" not in judges.score(said[0], said[0], sr, "今天天气很好", "zh")  # pocketsphinx: English only


def test_vitsflow_judge_prints_one_json_object_for_a_pair(real_speech, tmp_path):
    wav, sr = clip(real_speech, "en_ljspeech", EN[0])
    sf.write(tmp_path / "noisy.wav", with_noise(wav, 5.0), sr)
    ref = real_speech / "en_ljspeech" / "wavs" / f"{EN[0]}.wav"
    text = transcript(real_speech, "en_ljspeech", EN[0])
    cli = Path(sys.executable).with_name("vitsflow")
    out = subprocess.run([str(cli), "judge", "--ref", str(ref), "--syn", str(tmp_path / "noisy.wav"), "--text", text],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"mos", "mos_reference", "speaker_similarity", "cer", "wer", "mcd_db", "f0_rmse_cents", "vuv_error",
            "length_ratio"} <= set(result)
    assert result["mos"] < result["mos_reference"] and result["cer"] > 0 and result["mcd_db"] > 0
    assert result["length_ratio"] == 1.0 and result["judges"]["mos"] == "dnsmos"
    # no text: no CER; a file that is not audio: a clear error naming it
    out = subprocess.run([str(cli), "judge", "--ref", str(ref), "--syn", str(ref)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and json.loads(out.stdout)["cer"] is None and json.loads(out.stdout)["mcd_db"] == 0.0
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    out = subprocess.run([str(cli), "judge", "--ref", str(ref), "--syn", str(tmp_path / "bad.wav")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "bad.wav" in out.stderr

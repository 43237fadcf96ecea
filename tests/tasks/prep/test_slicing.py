"""From long recordings to a dataset: Silero VAD slicing (tasks/prep/slicing.py), transcription
(tasks/prep/asr.py), the `prepare` stage (tasks/prep/prepare.py) and its CLIs, on real speech:
LJSpeech clips joined into one long recording with pauses, whose true boundaries are known."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tasks.core.config import SliceParams, parse_params
from tasks.evaluation.judges import error_rates
from tasks.prep.slicing import slice_recording
from tests.helpers import MINILM

UTTS = ["LJ001-0002", "LJ001-0003", "LJ001-0005", "LJ001-0008", "LJ001-0010", "LJ001-0011"]
SR = 22050


def texts(real_speech: Path) -> dict[str, str]:
    lines = (real_speech / "en_ljspeech" / "metadata.csv").read_text(encoding="utf-8").splitlines()
    return {line.split("|")[0]: line.split("|")[1] for line in lines}


def joined(real_speech: Path, utts: list[str], pause_s: float, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The clips one after another with `pause_s` of faint noise before, between and after; and each
    clip's (start, end) in the result."""
    rng = np.random.default_rng(seed)
    pause = int(pause_s * SR)
    parts, bounds, pos = [], [], pause
    for utt in utts:
        wav, sr = sf.read(real_speech / "en_ljspeech" / "wavs" / f"{utt}.wav", dtype="float32")
        assert sr == SR
        parts.append(wav)
        bounds.append((pos, pos + len(wav)))
        pos += len(wav) + pause
    gaps = [np.zeros(pause, np.float32) for _ in range(len(parts) + 1)]
    x = np.concatenate([g for pair in zip(gaps, parts + [None]) for g in pair if g is not None])
    return x + (rng.standard_normal(len(x)) * 3e-4).astype(np.float32), bounds


def test_real_utterances_joined_with_pauses_come_back_with_their_boundaries(real_speech):
    x, bounds = joined(real_speech, UTTS, pause_s=1.0)
    clips, dropped = slice_recording(x, SR, SliceParams())
    assert len(clips) == len(bounds) and dropped == []
    for (s, e), (bs, be) in zip(clips, bounds):
        # the recordings' own edges hold up to ~0.1 s of silence; padding adds 0.1 s of pause
        assert abs(s - bs) / SR < 0.2 and abs(e - be) / SR < 0.2, ((s / SR, e / SR), (bs / SR, be / SR))


def test_speech_with_no_pause_longer_than_max_is_split_within_bounds_at_quiet_points(real_speech):
    x, bounds = joined(real_speech, UTTS, pause_s=0.1)  # 0.1 s: no pause counts (min_silence 0.5)
    cfg = SliceParams(min_seconds=2.0, max_seconds=8.0, min_silence=0.5, padding=0.0)
    clips, dropped = slice_recording(x, SR, cfg)
    assert dropped == [] and len(clips) >= 5
    lengths = [(e - s) / SR for s, e in clips]
    assert all(2.0 <= n <= 8.0 for n in lengths), lengths
    frame = int(0.02 * SR)
    rms = np.sqrt(np.convolve(x.astype(np.float64) ** 2, np.ones(frame) / frame, mode="same"))
    cuts = [(e + s) // 2 for (_, e), (s, _) in zip(clips, clips[1:])]  # the middle of what lies between two clips
    # each cut lies in a quiet stretch (a short pause, a breath, a closure): quieter than 80 % of the
    # recording's 20 ms frames, never in the middle of a vowel
    print("cut RMS / 20th percentile:", [round(float(rms[c] / np.quantile(rms, 0.2)), 3) for c in cuts])
    assert all(rms[c] < np.quantile(rms, 0.2) for c in cuts)


def test_a_short_piece_joins_its_neighbour_or_is_dropped_when_the_union_would_be_too_long():
    sr = 16000
    regions = [(0, 3 * sr), (int(3.5 * sr), int(3.8 * sr)), (int(5 * sr), int(9 * sr))]
    wav = np.zeros(10 * sr, np.float32)
    clips, dropped = slice_recording(wav, sr, SliceParams(min_seconds=1.0, max_seconds=6.0, padding=0.0), regions)
    assert clips == [(0, int(3.8 * sr)), (5 * sr, 9 * sr)] and dropped == []  # joined across the shorter pause
    regions = [(0, int(3.2 * sr)), (int(3.7 * sr), 4 * sr), (5 * sr, int(8.2 * sr))]
    clips, dropped = slice_recording(wav, sr, SliceParams(min_seconds=1.0, max_seconds=3.5, padding=0.0), regions)
    assert clips == [regions[0], regions[2]] and dropped == [regions[1]]  # either union would pass 3.5 s
    with pytest.raises(ValueError, match="min_seconds"):
        SliceParams(min_seconds=5, max_seconds=2)


@pytest.mark.slow
def test_vitsflow_slice_then_transcribe_english_with_pocketsphinx_gives_a_list_near_the_truth(real_speech, tmp_path):
    x, _ = joined(real_speech, UTTS[:4], pause_s=1.0)
    sf.write(tmp_path / "long.wav", x, SR)
    cli = Path(sys.executable).with_name("vitsflow")
    out = subprocess.run([str(cli), "slice", "--in", str(tmp_path / "long.wav"), "--out", str(tmp_path / "clips")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["clips"] == 4
    manifest = [json.loads(line) for line in (tmp_path / "clips" / "manifest.jsonl").read_text().splitlines()]
    assert [m["clip"] for m in manifest] == [f"long_{k:04d}.wav" for k in range(4)]
    assert all(m["source"].endswith("long.wav") and m["end"] > m["start"] for m in manifest)

    out = subprocess.run([str(cli), "transcribe", "--in", str(tmp_path / "clips"), "--out",
                          str(tmp_path / "clips" / "filelist.list"), "--lang", "en", "--speaker", "lj",
                          "--min-confidence", "0"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "clips" / "filelist.list").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and all(line.split("|")[1:3] == ["lj", "EN"] for line in lines)
    truth = texts(real_speech)
    cer = [error_rates(truth[u], line.split("|", 3)[3])["cer"] for u, line in zip(UTTS, lines)]
    print(f"pocketsphinx CER on the sliced clips: {np.round(cer, 3).tolist()} (mean {np.mean(cer):.3f})")
    assert np.mean(cer) < 0.3
    # a list the pipeline ingests as it is
    from tasks.core.config import DatasetConfig
    from tasks.prep.datasets import read_dataset

    ds = DatasetConfig(name="lj", language="en", path=str(tmp_path / "clips"), format="bv2_list")
    _, utts, rejects = read_dataset(ds, tmp_path)
    assert len(utts) == 4 and rejects == [] and utts[0].text == lines[0].split("|", 3)[3]


def test_unsure_or_empty_transcripts_go_to_the_review_file_not_the_list(real_speech, tmp_path):
    from tasks.prep.asr import PocketSphinx, transcribe_clips

    wav, sr = sf.read(real_speech / "en_ljspeech" / "wavs" / "LJ001-0008.wav", dtype="float32")
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(len(wav)).astype(np.float32)
    noise *= np.sqrt(np.mean(wav ** 2) / np.mean(noise ** 2))  # 0 dB SNR
    # measured on 10 LJSpeech clips: mean word posterior 0.32-0.84 clean, 0.01-0.26 at 0 dB SNR
    rows, review = transcribe_clips([("clean.wav", wav, sr), ("noisy.wav", wav + noise, sr),
                                     ("hiss.wav", noise[:sr] * 0.3, sr)], PocketSphinx(), "en", "lj",
                                    min_confidence=0.3)
    assert [r["audio"] for r in rows] == ["clean.wav"] and rows[0]["confidence"] >= 0.3
    reasons = {r["audio"]: r["reason"] for r in review}
    assert set(reasons) == {"noisy.wav", "hiss.wav"}
    assert reasons["noisy.wav"].startswith("confidence 0.") and "below min_confidence 0.3" in reasons["noisy.wav"]
    assert reasons["hiss.wav"] == "empty transcript"


def test_tiny_random_whisper_plumbing_transcribes_through_the_transformers_path(real_speech, tmp_path):
    from tasks.prep.asr import HfAsr, load_asr, transcribe_clips
    from tests.audio_models import build_tiny_whisper

    asr = load_asr(build_tiny_whisper(tmp_path / "whisper"), "ja")
    assert isinstance(asr, HfAsr)
    wav, sr = sf.read(real_speech / "ja_commonvoice" / "wavs" / "common_voice_ja_38833628_16k.wav", dtype="float32")
    rows, review = transcribe_clips([("x.wav", wav, sr)], asr, "ja", "s", min_confidence=0.9)
    assert len(rows) + len(review) == 1 and all(r["confidence"] is None for r in rows + review)  # no confidence
    with pytest.raises(ValueError, match="English only"):
        load_asr("pocketsphinx", "ja")


@pytest.mark.slow
def test_prepare_stage_turns_a_raw_audio_dataset_into_clips_ingest_reads_and_reslices_only_changed_files(
        real_speech, tmp_path):
    from tasks.prep.datasets import read_dataset
    from tasks.prep.prepare import prepare

    raw = tmp_path / "raw"
    raw.mkdir()
    for k, utts in enumerate([UTTS[:3], UTTS[3:]]):
        x, _ = joined(real_speech, utts, pause_s=1.0, seed=k)
        sf.write(raw / f"episode{k}.wav", x, SR)
    (raw / "broken.wav").write_bytes(b"RIFF nothing")
    data = {"datasets": [{"name": "pod", "language": "en", "path": "raw", "format": "raw_audio", "speaker": "lj",
                          "prepare": {"slice": {"max_seconds": 12.0}, "transcribe": {"min_confidence": 0.0}}}],
            "languages": {"en": {"normalizer": "en", "g2p": "en", "bert": {"model": MINILM}}}, "runtime": {"cache_dir": ".cache/vitsflow"}}
    params = parse_params(data)
    summary = prepare(params, tmp_path)
    assert summary["pod"]["clips"] == 6 and summary["pod"]["computed"] == 2 and summary["pod"]["rejects"] == 1
    out = tmp_path / "data" / "prepared" / "pod"
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all((out / r["audio"]).is_file() and r["speaker"] == "lj" for r in rows)
    assert "broken.wav" in (out / "rejects.jsonl").read_text()
    _, utts, rejects = read_dataset(params.datasets[0], tmp_path)  # what ingest reads
    assert len(utts) == 6 and rejects == [] and utts[0].utt_id.startswith("pod/clips/episode0_")

    before = {p.name: p.read_bytes() for p in (out / "clips").iterdir()}
    assert prepare(params, tmp_path)["pod"]["computed"] == 0  # all cached
    assert {p.name: p.read_bytes() for p in (out / "clips").iterdir()} == before
    x, _ = joined(real_speech, UTTS[3:5], pause_s=1.0, seed=5)  # one recording changes
    sf.write(raw / "episode1.wav", x, SR)
    again = prepare(params, tmp_path)["pod"]
    assert again["computed"] == 1 and again["clips"] == 5
    assert not (out / "clips" / "episode1_0002.wav").exists()  # the old third clip is gone


def test_raw_audio_datasets_need_a_speaker_and_prepare_belongs_to_them_only():
    from tasks.core.config import ConfigError

    base = {"languages": {"en": {"normalizer": "en", "g2p": "en", "bert": {"model": MINILM}}}}
    ds = {"name": "pod", "language": "en", "path": "raw", "format": "raw_audio"}
    with pytest.raises(ConfigError, match="raw_audio has no speaker column"):
        parse_params({**base, "datasets": [ds]})
    with pytest.raises(ConfigError, match="`prepare` is for format raw_audio"):
        parse_params({**base, "datasets": [{**ds, "format": "bv2_list", "prepare": {}}]})
    with pytest.raises(ConfigError, match=r"datasets\.0\.prepare\.slice.*min_seconds"):
        parse_params({**base, "datasets": [{**ds, "speaker": "h", "prepare": {"slice": {"min_seconds": 20}}}]})
    params = parse_params({**base, "datasets": [{**ds, "speaker": "h"}]})
    assert params.datasets[0].prepare.transcribe.model == "pocketsphinx" and params.datasets[0].list_name == "metadata.jsonl"

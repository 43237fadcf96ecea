"""The vocoder's feature cache (tasks/prep/vocoder.py) on the tiny corpus's ingested clips: keyed by
content, the mel is WaveGlow's own log mel of the clip at the vocoder's rate, and a clip too short
for the mel is an error naming it, in the stage the chunk's reject."""
import re

import numpy as np
import pytest
import torch
import yaml

import tasks.prep.vocoder as vocoder
from flows.fanout import fill_cache
from model.waveglow import mel_spectrogram
from tasks.core.cache import ResultCache
from tasks.core.code import ROOT, code_files
from tasks.core.config import parse_params
from tasks.core.shards import read_pcm
from tasks.prep.audio import resample, to_int16
from tasks.prep.ingest import read_index
from tasks.prep.vocoder import (ClipTooShort, clip_features, plan_vocoder, read_features, vocoder_chunk,
                                vocoder_settings)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the stage's chunks run (and steady timings on a shared 2-core machine:
    the mel's STFT basis, a 1024-point pseudo-inverse, takes seconds with two contending threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def params_of(root, **vocoder_section):
    data = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    data["vocoder"] = {"enabled": True, **vocoder_section}
    return parse_params(data)


class Inline:
    """What fill_cache needs of a Prefect task (`submit(...).result()`), run in this thread: the
    stage's own chunk function and cache filling, without a Prefect server."""

    def __init__(self, fn):
        self.fn, self.chunks = fn, []

    def submit(self, chunk, **kwargs):
        self.chunks.append(len(chunk))
        result = self.fn(chunk, **kwargs)
        return type("Done", (), {"result": lambda _self: result})()


def fill(params, root, cache):
    """The waveglow stage's feature step (flows/stages.py): the missing keys, computed in chunks."""
    items = plan_vocoder(read_index(root / "data/ingest"), params)
    computed = fill_cache(Inline(vocoder_chunk), items, cache, 5, 2, "waveglow features",
                          ingest_dir=root / "data/ingest", settings=vocoder_settings(params))
    return items, computed


def test_features_are_computed_once_and_a_settings_change_makes_new_keys(train_corpus, tmp_path):
    cache = ResultCache(tmp_path / "waveglow.sqlite")
    base = params_of(train_corpus)
    items, computed = fill(base, train_corpus, cache)
    assert computed == len(items) == 12 and len({i.key for i in items}) == 12
    assert not cache.missing(i.key for i in items)
    again, computed = fill(base, train_corpus, cache)
    assert computed == 0 and [i.key for i in again] == [i.key for i in items]

    # what only changes training, not a clip's features, keeps every key
    same = params_of(train_corpus, learning_rate=1e-3, max_steps=7, batch_size=2,
                     waveglow_config={"n_flows": 4, "n_early_every": 2, "WN_config": {"n_layers": 2, "n_channels": 8,
                                                                                      "kernel_size": 3}},
                     data_config={"segment_length": 4096})
    assert [i.key for i in plan_vocoder(read_index(train_corpus / "data/ingest"), same)] == [i.key for i in items]
    # the rate, any mel setting and the mel's channel count make new keys, for every clip
    for changed in ({"data_config": {"sampling_rate": 16000}}, {"data_config": {"mel_fmax": 7600.0}},
                    {"data_config": {"mel_fmin": 50.0}}, {"data_config": {"filter_length": 2048, "win_length": 2048}},
                    {"data_config": {"win_length": 800}}, {"waveglow_config": {"n_mel_channels": 64}}):
        keys = {i.key for i in plan_vocoder(read_index(train_corpus / "data/ingest"), params_of(train_corpus, **changed))}
        assert not keys & {i.key for i in items}, changed
    # so does the rate the ingested clips are at (they are resampled from it)
    data = yaml.safe_load((train_corpus / "params.yaml").read_text(encoding="utf-8"))
    data["audio"]["sample_rate"] = 24000
    keys = {i.key for i in plan_vocoder(read_index(train_corpus / "data/ingest"), parse_params(data))}
    assert not keys & {i.key for i in items}
    # a 16 kHz vocoder's features are computed anew (and the 22.05 kHz ones stay)
    _, computed = fill(params_of(train_corpus, data_config={"sampling_rate": 16000}), train_corpus, cache)
    assert computed == 12 and not cache.missing(i.key for i in items)


def test_a_clips_key_follows_its_audio_and_the_code_that_computes_it(train_corpus, monkeypatch):
    params = params_of(train_corpus)
    rows = read_index(train_corpus / "data/ingest")
    keys = [i.key for i in plan_vocoder(rows, params)]
    edited = [dict(rows[0], sha256="0" * 64)] + rows[1:]  # the first clip's audio changed, nothing else
    new = [i.key for i in plan_vocoder(edited, params)]
    assert new[0] != keys[0] and new[1:] == keys[1:]
    # the key hashes the code of the mel and the resampler (the module's import closure) ...
    files = code_files("tasks.prep.vocoder")
    for rel in ("tasks/prep/vocoder.py", "model/waveglow.py", "model/mel_processing.py", "tasks/prep/audio.py"):
        assert ROOT / rel in files, rel
    # ... so other code gives other keys for every clip
    monkeypatch.setattr(vocoder, "code_hash", lambda name: "another version of " + name)
    assert not {i.key for i in plan_vocoder(rows, params)} & set(keys)


def test_the_cached_mel_is_waveglows_log_mel_of_the_ingested_clip(train_corpus, tmp_path):
    params = params_of(train_corpus)
    cache = ResultCache(tmp_path / "waveglow.sqlite")
    items, _ = fill(params, train_corpus, cache)
    for item in items[:3]:
        pcm, mel = read_features(cache, item.key)
        ingested = read_pcm(train_corpus / "data/ingest", item.row)
        assert pcm.dtype == np.dtype("<i2") and np.array_equal(pcm, ingested)  # equal rates: the clip itself
        assert mel.dtype == np.float32 and mel.shape == (80, len(pcm) // 256 + 1)
        ref = mel_spectrogram(torch.from_numpy(ingested.astype(np.float32) / 32768.0)[None])[0]
        assert torch.equal(torch.from_numpy(mel.copy()), ref)
        assert -11.6 < mel.min() and mel.max() < 5 and mel.std() > 0.5  # log of clamp 1e-5: real speech spread
    with pytest.raises(KeyError, match="run the waveglow stage"):
        read_features(cache, "0" * 64)


def test_audio_is_resampled_to_the_vocoders_rate_before_its_mel(train_corpus, tmp_path):
    params = params_of(train_corpus, data_config={"sampling_rate": 16000, "mel_fmax": 7000.0},
                       waveglow_config={"n_mel_channels": 40})
    cache = ResultCache(tmp_path / "waveglow.sqlite")
    items, _ = fill(params, train_corpus, cache)
    for item in items[:3]:
        pcm, mel = read_features(cache, item.key)
        n = item.row["num_samples"]
        assert item.row["sample_rate"] == 22050 and abs(len(pcm) - n * 16000 / 22050) <= 1, (len(pcm), n)
        expected = to_int16(resample(read_pcm(train_corpus / "data/ingest", item.row).astype(np.float32) / 32768.0,
                                     22050, 16000))
        assert np.array_equal(pcm, expected)
        ref = mel_spectrogram(torch.from_numpy(expected.astype(np.float32) / 32768.0)[None], sampling_rate=16000,
                              n_mel_channels=40, mel_fmax=7000.0)[0]
        assert mel.shape == (40, len(pcm) // 256 + 1) and torch.equal(torch.from_numpy(mel.copy()), ref)

    # resampled, not cut or sped up: a 1 s 440 Hz tone stays 1 s of 440 Hz
    t = np.arange(22050) / 22050
    tone = np.round(np.sin(2 * np.pi * 440 * t) * 16000).astype(np.int16)
    out, mel = clip_features(tone, vocoder_settings(params))
    assert len(out) == 16000 and mel.shape == (40, 16000 // 256 + 1)
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    assert np.argmax(spectrum) == 440  # 1 Hz bins over 16000 samples at 16 kHz
    assert abs(np.abs(out[1000:-1000]).max() - 16000) < 200  # the level kept


def test_a_full_scale_clip_resampled_stays_in_int16_without_wrapping(train_corpus):
    params = params_of(train_corpus, data_config={"sampling_rate": 16000})
    square = np.where(np.arange(22050) % 100 < 50, 32767, -32768).astype(np.int16)  # overshoots when resampled
    out, _ = clip_features(square, vocoder_settings(params))
    # scaled below full scale rather than clipped or wrapped around (a wrap flips a sample's sign)
    assert np.abs(out.astype(np.int32)).max() <= 32767
    ref = resample(square.astype(np.float32) / 32768.0, 22050, 16000)
    assert np.corrcoef(out.astype(np.float64), ref)[0, 1] > 0.999


def test_a_clip_too_short_for_the_mel_is_an_error_naming_the_clip_and_the_chunks_reject(train_corpus, tmp_path):
    params = params_of(train_corpus, data_config={"sampling_rate": 8000, "mel_fmax": 4000.0})
    settings = vocoder_settings(params)
    # filter_length 1024 reflect-pads by 512: 1420 samples at 22.05 kHz are 515 at 8 kHz (enough), 1400 are 508
    assert clip_features(np.ones(1420, np.int16), settings)[1].shape == (80, 515 // 256 + 1)
    with pytest.raises(ClipTooShort, match="508 samples at 8000 Hz is too short.*filter_length 1024"):
        clip_features(np.ones(1400, np.int16), settings)
    with pytest.raises(ClipTooShort, match="0 samples"):
        clip_features(np.zeros(0, np.int16), vocoder_settings(params_of(train_corpus)))

    # a clip that short in the corpus: the chunk's reject names it and the setting that keeps it
    # out, and the other clip's features are there
    rows = read_index(train_corpus / "data/ingest")
    short = dict(rows[0], nbytes=2 * 1400, num_samples=1400, id="tiny_clip")  # its first 1400 samples
    items = plan_vocoder([rows[1], short], params)
    (_, good), (key, bad) = vocoder_chunk(items, train_corpus / "data/ingest", settings)
    assert good.meta["frames"] > 0 and key == items[1].key and bad.data == b""
    assert re.fullmatch(r"clip 'tiny_clip' \(dataset '.+'\): 508 samples.*audio.min_seconds.*", bad.meta["reject"])
    assert len(vocoder_chunk(items[:1], train_corpus / "data/ingest", settings)) == 1

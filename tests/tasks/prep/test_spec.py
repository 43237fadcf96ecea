import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from model.mel_processing import STFTParams, linear_spectrogram, mel_spectrogram, pcm16_linear_spectrogram, spec_to_mel
from tasks.core.cache import ResultCache
from tasks.core.config import load_params
from tasks.prep.spec import SpecProcesses, assemble, plan_spec, read_linear, spec_chunk, stft_params, stft_settings
from tests.tasks.prep.test_ingest import run_ingest, corpus  # noqa: F401  (fixture)
from tasks.prep.ingest import read_index

P = STFTParams(22050, 1024, 256, 1024, 80)


def test_the_stages_spectrogram_of_int16_pcm_is_the_training_loss_stft_bit_for_bit():
    pcm = (np.sin(np.arange(22050) * 0.05) * 8000).astype(np.int16)
    linear = pcm16_linear_spectrogram(torch.from_numpy(pcm), P)
    assert linear.shape == (1, 513, 22050 // 256)
    y = torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None]
    assert torch.equal(linear, linear_spectrogram(y, P))
    assert torch.equal(spec_to_mel(linear, P), mel_spectrogram(y, P))  # the trainer's mel of it


def test_log_mel_agrees_with_librosa_when_framed_the_same_way():
    import librosa
    rng = np.random.default_rng(0)
    pcm = (rng.normal(0, 0.1, 22050) * 32767).astype(np.int16)
    mel = spec_to_mel(pcm16_linear_spectrogram(torch.from_numpy(pcm), P), P)[0]
    y = pcm.astype(np.float32) / 32768.0
    y = np.pad(y, ((1024 - 256) // 2,) * 2, mode="reflect")
    ref = librosa.feature.melspectrogram(y=y, sr=22050, n_fft=1024, hop_length=256, win_length=1024,
                                         center=False, power=1.0, n_mels=80)
    assert np.abs(np.log(np.clip(ref, 1e-5, None)) - mel.numpy()).max() < 1e-3


@pytest.fixture()
def ingested(corpus, tmp_path):
    run_ingest(corpus, tmp_path / "ingest")
    return load_params(corpus), tmp_path / "ingest"


def test_cached_spectrograms_read_back_as_computed(ingested, tmp_path):
    params, ingest_dir = ingested
    items = plan_spec(read_index(ingest_dir), params)
    cache = ResultCache(tmp_path / "spec.sqlite")
    cache.put_many(spec_chunk(items, ingest_dir, stft_settings(params)))
    summary = assemble(items, cache, tmp_path / "spec", params)
    import json
    meta = json.loads((tmp_path / "spec" / "meta.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "spec" / "index.jsonl").read_text().splitlines()]
    assert summary["utterances"] == len(items) == len(rows)
    ingest_row = items[0].row
    linear = read_linear(tmp_path / "spec", rows[0], meta)
    from tasks.core.shards import read_pcm
    ref = pcm16_linear_spectrogram(torch.from_numpy(read_pcm(ingest_dir, ingest_row)), stft_params(params))[0]
    assert rows[0]["frames"] == ingest_row["num_samples"] // params.features.spec.hop_length
    assert np.array_equal(linear, ref.half().numpy())


def test_with_caching_off_only_frame_counts_are_written(ingested, tmp_path):
    params, ingest_dir = ingested
    items = plan_spec(read_index(ingest_dir), params)
    assemble(items, None, tmp_path / "spec", params)
    assert not list((tmp_path / "spec").glob("spec-*.bin"))
    assert (tmp_path / "spec" / "index.jsonl").read_text().count("frames") == len(items)


def test_spec_keys_change_with_stft_params_only(ingested):
    params, ingest_dir = ingested
    rows = read_index(ingest_dir)
    keys = [i.key for i in plan_spec(rows, params)]
    hop = params.model_copy(update={"features": params.features.model_copy(update={
        "spec": params.features.spec.model_copy(update={"hop_length": 128})})})
    other = params.model_copy(update={"split": params.split.model_copy(update={"seed": 99})})
    assert set(keys).isdisjoint(i.key for i in plan_spec(rows, hop))
    assert keys == [i.key for i in plan_spec(rows, other)]



@pytest.mark.slow
def test_worker_processes_commit_what_the_in_thread_path_computes(ingested, tmp_path):
    params, ingest_dir = ingested
    items = plan_spec(read_index(ingest_dir), params)
    with SpecProcesses(2, tmp_path / "spec.sqlite") as workers:
        for start in range(0, len(items), 3):
            workers.store_chunk(items[start:start + 3], ingest_dir, stft_settings(params))
    cache = ResultCache(tmp_path / "spec.sqlite")
    assert dict(cache.iter_entries(i.key for i in items)) == dict(spec_chunk(items, ingest_dir, stft_settings(params)))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_spec_worker_processes_die_with_a_killed_stage(ingested, corpus, tmp_path):  # noqa: F811
    _, ingest_dir = ingested
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from tasks.core.config import load_params
        from tasks.prep.ingest import read_index
        from tasks.prep.spec import SpecProcesses, plan_spec, stft_settings
        params = load_params({str(corpus)!r})
        items = plan_spec(read_index(Path({str(ingest_dir)!r})), params)
        with SpecProcesses(2, Path({str(tmp_path / "spec.sqlite")!r})) as workers:
            workers.store_chunk(items[:2], Path({str(ingest_dir)!r}), stft_settings(params))
            print(" ".join(str(p) for p in workers._pool._processes), flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert pids and all(_alive(p) for p in pids)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]

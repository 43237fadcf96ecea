"""The WaveGlow trainer (tasks/training/waveglow.py) on the tiny corpus, on CPU, with a tiny WaveGlow:
it learns, a stopped or SIGKILLed run continues exactly as an uninterrupted one, it starts from an
NVIDIA checkpoint or an earlier run, it writes checkpoint bundles, two DDP processes train as one,
and bad params are errors naming their key."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tasks.prep.vocoder as vocoder
from model.waveglow import CheckpointError as WaveGlowCheckpointError
from model.waveglow import WaveGlowLoss, load_nvidia_checkpoint, mel_spectrogram
from tasks.core.cache import ResultCache
from tasks.core.checkpoints import CheckpointError, CheckpointStore
from tasks.core.config import ConfigError, load_params, parse_params
from tasks.core.storage import open_storage
from tasks.prep.ingest import read_index
from tasks.prep.vocoder import CACHE_NAME, plan_vocoder, read_features, vocoder_chunk, vocoder_settings
from tasks.training.waveglow import (NET, Order, Segments, VocoderError, build_model, clips, load_initial,
                                     run_id_for, train, validation_loss)

REPO = Path(__file__).resolve().parents[3]
CONFORMANCE = REPO / "tests" / "data" / "waveglow_conformance"
NVIDIA_PT = CONFORMANCE / "nvidia_checkpoint_small.pt"
SMALL = json.loads((CONFORMANCE / "config_small.json").read_text())["waveglow_config"]  # the .pt's config
TINY = {"n_mel_channels": 16, "n_flows": 4, "n_group": 8, "n_early_every": 2, "n_early_size": 2,
        "WN_config": {"n_layers": 2, "n_channels": 16, "kernel_size": 3}}
QUIET = dict(log_interval=100, eval_interval=100, save_interval=100)
PER_EPOCH = 4  # the corpus's 8 train clips in batches of 2


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: steady timings on a shared 2-core machine, and the same kernels in every
    process of a test (in-process runs and subprocesses alike), so results compare bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    """The vocoder feature cache every test's params point at (runtime.cache_dir), outside the corpus."""
    return tmp_path_factory.mktemp("waveglow_cache")


def wg_data(corpus: Path, work: Path, cache_dir: Path, waveglow_config=None, data_config=None, **vocoder_section):
    data = yaml.safe_load((corpus / "params.yaml").read_text(encoding="utf-8"))
    data["train"]["log_dir"] = str(work / "logs")
    data["storage"] = {"uri": f"file://{work}/storage"}
    data["runtime"] = {**(data.get("runtime") or {}), "cache_dir": str(cache_dir)}
    data["vocoder"] = {"enabled": True, "waveglow_config": waveglow_config or TINY,
                       "data_config": {"segment_length": 4096, **(data_config or {})},
                       "batch_size": 2, "max_steps": 8, "device": "cpu", **QUIET, **vocoder_section}
    return data


def wg_params(corpus: Path, work: Path, cache_dir: Path, **kwargs):
    return parse_params(wg_data(corpus, work, cache_dir, **kwargs))


def with_features(params, corpus: Path):
    """Fill the feature cache as the waveglow stage does before it trains (its missing keys only)."""
    items = plan_vocoder(read_index(corpus / "data/ingest"), params)
    cache = ResultCache(Path(params.runtime.cache_dir) / f"{CACHE_NAME}.sqlite")
    todo = [i for i in items if i.key in cache.missing(i.key for i in items)]
    if todo:
        cache.put_many(vocoder_chunk(todo, corpus / "data/ingest", vocoder_settings(params)))
    return params


def store_of(work: Path, run_id: str) -> CheckpointStore:
    return CheckpointStore(open_storage(f"file://{work}/storage"), run_id)


def assert_equal_weights(a: dict, b: dict, what: str = "") -> None:
    assert list(a) == list(b), what
    for key in a:
        assert torch.equal(a[key], b[key]), (what, key)


def write_params_file(corpus: Path, work: Path, data: dict) -> Path:
    """params.yaml in `work` (the CLI's repo root), its data/ingest the corpus's."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "data").mkdir(exist_ok=True)
    (work / "data" / "ingest").symlink_to(corpus / "data" / "ingest")
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def python_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


# ----------------------------------------------------------------------------- data


def test_slices_are_hop_aligned_cuts_of_the_clip_and_its_mel(train_corpus, tmp_path, feature_cache):
    params = with_features(wg_params(train_corpus, tmp_path, feature_cache, data_config={"segment_length": 24576}),
                           train_corpus)
    v = params.vocoder
    cache = ResultCache(feature_cache / f"{CACHE_NAME}.sqlite")
    rows = clips(train_corpus, params)["train"]
    segments = Segments(cache, rows, v)
    assert len(segments) == 8 and segments.frames == 24576 // 256 + 1
    long_ = next(i for i, r in enumerate(rows) if r["num_samples"] >= 24576 + 20 * 256)
    short = next(i for i, r in enumerate(rows) if r["num_samples"] < 24576)
    pcm, mel = read_features(cache, rows[long_]["key"])
    starts = set()
    for epoch in range(6):
        m, a = segments.item(long_, np.random.default_rng([v.seed, epoch, long_]))
        assert m.shape == (16, segments.frames) and a.shape == (24576,)
        start = int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(
            pcm.astype(np.float32) / 32768.0, 24576)[::256] == a.numpy(), axis=1))[0]) * 256
        starts.add(start)
        assert torch.equal(m, torch.from_numpy(mel[:, start // 256:start // 256 + segments.frames].copy()))
        # away from its edges the slice's mel is the mel of the slice alone (NVIDIA's per-segment get_mel)
        own = mel_spectrogram(a[None], **v.data_config.mel_kwargs(16))[0]
        assert torch.allclose(m[:, 2:-2], own[:, 2:-2], atol=1e-4)
    assert len(starts) > 1  # random starts, seeded by (seed, epoch, clip)
    again = segments.item(long_, np.random.default_rng([v.seed, 3, long_]))
    assert torch.equal(again[1], segments.item(long_, np.random.default_rng([v.seed, 3, long_]))[1])
    # a clip shorter than a slice: zero-padded, its mel that of the padded slice (as NVIDIA's loader)
    m, a = segments.item(short, np.random.default_rng(0))
    pcm, _ = read_features(cache, rows[short]["key"])
    assert torch.equal(a[:len(pcm)], torch.from_numpy(pcm.astype(np.float32)) / 32768.0)
    assert not a[len(pcm):].any()
    assert torch.equal(m, mel_spectrogram(a[None], **v.data_config.mel_kwargs(16))[0])


def test_each_epoch_is_a_seeded_permutation_shared_out_between_ranks():
    one = Order(10, 2, seed=5)
    assert sorted(i for b in one.batches() for i in b) == list(range(10)) and len(one.batches()) == 5
    first = one.batches()
    one.next_epoch()
    assert one.batches() != first
    ranks = [Order(11, 2, seed=5, rank=r, world=2) for r in range(2)]
    shares = [[i for b in o.batches() for i in b] for o in ranks]
    assert len(shares[0]) == len(shares[1]) == 4 and not set(shares[0]) & set(shares[1])  # 5 each, last batch dropped
    resumed = Order(10, 2, seed=5)
    resumed.load_state_dict({"epoch": 1, "position": 2})
    assert list(resumed) == one.batches()[2:]


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_the_loss_falls_over_a_few_dozen_steps(train_corpus, tmp_path, feature_cache):
    params = with_features(wg_params(train_corpus, tmp_path, feature_cache, max_steps=40, learning_rate=1e-3,
                                     log_interval=10, eval_interval=40, save_interval=40), train_corpus)
    v = params.vocoder
    torch.manual_seed(v.seed)
    cache = ResultCache(feature_cache / f"{CACHE_NAME}.sqlite")
    val = Segments(cache, clips(train_corpus, params)["val"], v)
    before = validation_loss(build_model(v), val, WaveGlowLoss(v.sigma), torch.device("cpu"))
    steps = []
    result = train(params, train_corpus, steps.append)
    losses = [s["loss"] for s in steps]
    assert [s["step"] for s in steps] == list(range(1, 41)) and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
    assert result.step == 40 and result.epoch == 40 // PER_EPOCH - 1
    assert result.val_loss < before - 0.5, (before, result.val_loss)
    logs = list((tmp_path / "logs" / result.run_id).glob("events.out.tfevents.*"))
    assert logs and logs[0].stat().st_size > 10_000  # loss scalars and the copy-synthesis audio


@pytest.mark.slow
def test_a_stopped_run_continued_ends_equal_to_an_uninterrupted_one(train_corpus, tmp_path, feature_cache):
    def run(work, max_steps):
        steps = []
        params = with_features(wg_params(train_corpus, work, feature_cache, max_steps=max_steps), train_corpus)
        return train(params, train_corpus, steps.append), steps

    full, full_steps = run(tmp_path / "full", 10)
    assert [s["step"] for s in full_steps] == list(range(1, 11))
    full_nets, full_state, _ = store_of(tmp_path / "full", full.run_id).load()
    for stop in (PER_EPOCH, PER_EPOCH + 2):  # at an epoch's end, and inside one
        work = tmp_path / f"stop{stop}"
        first, _ = run(work, stop)
        assert first.run_id == full.run_id and first.step == stop and first.manifest["step"] == stop
        resumed, resumed_steps = run(work, 10)
        assert [s["step"] for s in resumed_steps] == list(range(stop + 1, 11))
        assert resumed_steps == full_steps[stop:], stop  # the same batches, the same losses, exactly
        assert_equal_weights(resumed.model.state_dict(), full.model.state_dict(), f"stop {stop}")
        nets, state, _ = store_of(work, full.run_id).load()
        assert_equal_weights(nets[NET], full_nets[NET], f"stop {stop}, saved")
        assert state["order"] == full_state["order"] and state["step"] == 10
        for k, s in full_state["optimizer"]["state"].items():
            for name, t in s.items():
                assert torch.equal(state["optimizer"]["state"][k][name], t), (stop, k, name)
    # nothing left to do: nothing trains, the checkpoint stays
    again, again_steps = run(tmp_path / "full", 10)
    assert again_steps == [] and again.step == 10
    assert store_of(tmp_path / "full", full.run_id).latest()["step"] == 10


@pytest.mark.slow
def test_checkpoints_are_bundles_with_a_manifest_on_the_storage(train_corpus, tmp_path, feature_cache):
    params = with_features(wg_params(train_corpus, tmp_path, feature_cache, max_steps=9, save_interval=3,
                                     eval_interval=3, keep_best=1), train_corpus)
    result = train(params, train_corpus)
    run_dir = tmp_path / "storage" / "runs" / result.run_id
    assert result.run_id.startswith("waveglow-") and json.loads((run_dir / "latest.json").read_text())["step"] == 9
    store = store_of(tmp_path, result.run_id)
    bundles = store.list_bundles()
    assert 9 in [m["step"] for m in bundles] and len(bundles) <= 2  # the latest and the best 1 by val_loss
    manifest = store.latest()
    assert manifest == result.manifest and manifest["path"] == f"runs/{result.run_id}/step_00000009/"
    assert set(manifest["objects"]) == {f"{NET}.safetensors", "state.pt"}
    import hashlib
    for name, info in manifest["objects"].items():
        data = (run_dir / "step_00000009" / name).read_bytes()
        assert len(data) == info["bytes"] and hashlib.sha256(data).hexdigest() == info["sha256"], name
    assert manifest["metrics"]["val_loss"] == pytest.approx(result.val_loss) and np.isfinite(manifest["metrics"]["loss"])
    assert {"git_commit", "dvc_lock_sha256", "params_sha256"} <= set(manifest["lineage"])
    nets, state, _ = store.load()
    assert_equal_weights(nets[NET], result.model.state_dict())
    assert state["step"] == 9 and state["order"] == {"epoch": 9 // PER_EPOCH, "position": 9 % PER_EPOCH}
    assert state["world_size"] == 1 and len(state["rng"]) == 1 and state["initial"] == {}
    assert state["waveglow_config"] == TINY and state["sample_rate"] == 22050
    assert state["data_config"] == params.vocoder.data_config.model_dump()
    # a corrupt bundle is refused on resume, naming the object, rather than trained on
    path = run_dir / "step_00000009" / f"{NET}.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    more = with_features(wg_params(train_corpus, tmp_path, feature_cache, max_steps=12), train_corpus)
    with pytest.raises(CheckpointError, match=f"{NET}.safetensors.*corrupt"):
        train(more, train_corpus)


def test_the_run_id_follows_what_is_trained_and_on_which_clips(train_corpus, tmp_path, feature_cache, monkeypatch):
    def rid(root=train_corpus, data_fn=None, **kwargs):
        data = wg_data(train_corpus, tmp_path, feature_cache, **kwargs)
        if data_fn:
            data_fn(data)
        return run_id_for(parse_params(data), root)

    base = rid()
    assert base.startswith("waveglow-")
    # how long and how often: the same run
    assert rid(max_steps=5000, epochs=3, log_interval=1, eval_interval=7, save_interval=9, keep_best=5,
               val_max_utterances=1, nproc=2, device="auto", infer_sigma=0.3, denoise=0.0) == base
    # what is computed: another run
    for other in ({"learning_rate": 1e-3}, {"seed": 1}, {"sigma": 0.7}, {"batch_size": 4},
                  {"waveglow_config": dict(TINY, n_flows=2)}, {"data_config": {"segment_length": 8192}},
                  {"data_config": {"sampling_rate": 16000}}, {"init_from": "run:some-run"}):
        assert rid(**other) != base, other
    assert rid(data_fn=lambda d: d["audio"].update(sample_rate=24000)) != base
    assert rid(run_id="my-vocoder") == "my-vocoder"
    # another clip's audio: another run
    other_root = tmp_path / "edited"
    (other_root / "data" / "ingest").mkdir(parents=True)
    rows = read_index(train_corpus / "data" / "ingest")
    rows[3] = dict(rows[3], sha256="f" * 64)
    (other_root / "data" / "ingest" / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert rid(root=other_root) != base
    # but not the code or library versions the feature cache keys hash: an edit to that code (any
    # project module it imports) or a torch upgrade continues the run instead of starting anew
    keys = [r["key"] for r in clips(train_corpus, parse_params(wg_data(train_corpus, tmp_path, feature_cache)))["train"]]
    monkeypatch.setattr(vocoder, "code_hash", lambda name: "edited " + name)
    assert clips(train_corpus, parse_params(wg_data(train_corpus, tmp_path, feature_cache)))["train"][0]["key"] != keys[0]
    assert rid() == base


@pytest.mark.slow
def test_a_killed_process_resumes_from_its_last_checkpoint(train_corpus, tmp_path, feature_cache):
    """SIGKILL `python -m tasks.training.waveglow` after its first checkpoint; the rerun resumes from
    it and ends where an uninterrupted run ends, bit for bit."""
    common = dict(max_steps=24, save_interval=4)
    reference = train(with_features(wg_params(train_corpus, tmp_path / "ref", feature_cache, **common), train_corpus),
                      train_corpus)

    work = tmp_path / "killed"
    params_path = write_params_file(train_corpus, work, wg_data(train_corpus, work, feature_cache, **common))
    assert run_id_for(load_params(params_path), work) == reference.run_id
    latest = work / "storage" / "runs" / reference.run_id / "latest.json"
    cmd = [sys.executable, "-m", "tasks.training.waveglow", "--params", str(params_path)]
    proc = subprocess.Popen(cmd, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not latest.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    assert latest.exists(), out[-3000:]
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < 24, "the run finished before it could be killed"

    rerun = subprocess.run(cmd, env=python_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resumed run {reference.run_id} at step {killed_at}" in rerun.stderr
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["step"] == 24
    nets, state, _ = store_of(work, reference.run_id).load()
    assert state["step"] == 24
    assert_equal_weights(nets[NET], reference.model.state_dict())


# ----------------------------------------------------------------------------- initial weights


@pytest.mark.slow
def test_init_from_an_nvidia_checkpoint_starts_from_its_weights(train_corpus, tmp_path, feature_cache):
    nvidia, info = load_nvidia_checkpoint(NVIDIA_PT)
    assert info["config"] == SMALL and info["iteration"] == 1234
    params = with_features(wg_params(train_corpus, tmp_path, feature_cache, waveglow_config=SMALL,
                                     data_config={"segment_length": 2048}, init_from=str(NVIDIA_PT), max_steps=0),
                           train_corpus)
    start = train(params, train_corpus)
    nets, state, manifest = store_of(tmp_path, start.run_id).load()
    assert manifest["step"] == 0
    assert_equal_weights(nets[NET], nvidia.state_dict())  # the first bundle holds the checkpoint's weights
    assert state["initial"] == {"init_from": str(NVIDIA_PT), "format": "nvidia", "iteration": 1234}
    # training on from them keeps the record (a resume: init_from is not read again)
    more = with_features(wg_params(train_corpus, tmp_path, feature_cache, waveglow_config=SMALL,
                                   data_config={"segment_length": 2048}, init_from=str(NVIDIA_PT), max_steps=2),
                         train_corpus)
    steps = []
    result = train(more, train_corpus, steps.append)
    assert result.run_id == start.run_id and [s["step"] for s in steps] == [1, 2] and np.isfinite(steps[-1]["loss"])
    nets, state, _ = store_of(tmp_path, start.run_id).load()
    assert state["step"] == 2 and state["initial"]["init_from"] == str(NVIDIA_PT)
    moved = nets[NET]["WN.0.start.weight_v"] - nvidia.state_dict()["WN.0.start.weight_v"]
    assert 0 < moved.abs().max() < 1e-3  # two Adam steps of lr 1e-4 from there


def test_an_initial_checkpoint_that_does_not_fit_is_an_error_naming_the_file(train_corpus, tmp_path, feature_cache):
    def attempt(init_from, waveglow_config=TINY):
        params = with_features(wg_params(train_corpus, tmp_path, feature_cache, waveglow_config=waveglow_config,
                                         init_from=init_from, max_steps=1), train_corpus)
        return train(params, train_corpus)

    with pytest.raises(VocoderError, match=rf"vocoder.init_from {re.escape(str(NVIDIA_PT))}: the checkpoint is WaveGlow\(.*"
                                           r"'n_flows': 6.*vocoder.waveglow_config say .*'n_flows': 4"):
        attempt(str(NVIDIA_PT))
    inference_form = tmp_path / "inference.pt"
    torch.save(load_nvidia_checkpoint(NVIDIA_PT)[0].remove_weightnorm().state_dict(), inference_form)
    with pytest.raises(VocoderError, match=rf"{re.escape(str(inference_form))}: its weight norm was removed"):
        attempt(str(inference_form), SMALL)
    with pytest.raises(WaveGlowCheckpointError, match=rf"{re.escape(str(tmp_path / 'missing.pt'))}: no such file"):
        attempt(str(tmp_path / "missing.pt"))
    assert not (tmp_path / "storage").exists()  # nothing was written for a run that could not start


def test_init_from_an_earlier_run_starts_from_its_bundle(train_corpus, tmp_path, feature_cache):
    first = train(with_features(wg_params(train_corpus, tmp_path, feature_cache, max_steps=6, save_interval=3,
                                          eval_interval=3, keep_best=2), train_corpus), train_corpus)
    store = store_of(tmp_path, first.run_id)
    assert [m["step"] for m in store.list_bundles()] == [3, 6]

    def start_from(ref, **kwargs):
        params = with_features(wg_params(train_corpus, tmp_path, feature_cache, init_from=ref, max_steps=0,
                                         learning_rate=5e-4, **kwargs), train_corpus)
        result = train(params, train_corpus)
        assert result.run_id != first.run_id
        return store_of(tmp_path, result.run_id).load()

    nets, state, _ = start_from(f"run:{first.run_id}")
    assert_equal_weights(nets[NET], first.model.state_dict())
    assert state["initial"] == {"init_from": f"run:{first.run_id}", "step": 6}
    nets, state, _ = start_from(f"run:{first.run_id}:3")  # another step: another run (init_from differs)
    assert_equal_weights(nets[NET], store.load(3)[0][NET])
    assert state["initial"] == {"init_from": f"run:{first.run_id}:3", "step": 3}
    # a run of another shape is refused naming the bundle and both configs
    other = dict(TINY, n_flows=2)
    with pytest.raises(VocoderError, match=rf"run:{first.run_id}: the bundle \(runs/{first.run_id}/step_00000006/\) "
                                           r"is WaveGlow\(.*'n_flows': 4.*waveglow_config say .*'n_flows': 2"):
        load_initial(wg_params(train_corpus, tmp_path, feature_cache, waveglow_config=other,
                               init_from=f"run:{first.run_id}").vocoder, train_corpus,
                     wg_params(train_corpus, tmp_path, feature_cache, waveglow_config=other))
    with pytest.raises(CheckpointError, match="no-such-run"):
        start_from("run:no-such-run")


# ----------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_two_ddp_processes_train_on_their_shares_with_averaged_gradients(train_corpus, tmp_path, feature_cache):
    """torchrun --nproc_per_node 2 -m tasks.training.waveglow on gloo: rank 0's checkpoint equals one
    model stepped with the mean of the two ranks' gradients on their own batches."""
    data = wg_data(train_corpus, tmp_path, feature_cache, max_steps=3, batch_size=2)
    params = with_features(parse_params(data), train_corpus)
    params_path = write_params_file(train_corpus, tmp_path / "root", data)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "tasks.training.waveglow",
           "--params", str(params_path)]
    proc = subprocess.run(cmd, env=python_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])  # rank 0 only
    run_id = run_id_for(params, train_corpus)
    assert printed["run_id"] == run_id and printed["step"] == 3 and proc.stdout.count('"run_id"') == 1
    nets, state, _ = store_of(tmp_path, run_id).load()
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 3
    assert state["order"] == {"epoch": 1, "position": 1}  # 4 clips a rank: 2 batches an epoch

    # the same three steps in this process: each rank's batches, the mean of their gradients
    v = params.vocoder
    cache = ResultCache(feature_cache / f"{CACHE_NAME}.sqlite")
    segments = Segments(cache, clips(train_corpus, params)["train"], v)
    criterion = WaveGlowLoss(v.sigma)

    def batches(rank, world):
        order = Order(len(segments), v.batch_size, v.seed, rank, world)
        while True:
            for indices in order:
                yield segments.batch(indices, order.epoch, v.seed)
            order.next_epoch()

    def stepped(ranks, world):
        torch.manual_seed(v.seed)
        model = build_model(v)
        optimizer = torch.optim.Adam(model.parameters(), lr=v.learning_rate)
        streams = [batches(r, world) for r in ranks]
        for _ in range(3):
            grads = []
            for stream in streams:
                mel, audio = next(stream)
                grads.append(torch.autograd.grad(criterion(model(mel, audio)), list(model.parameters())))
            for p, *g in zip(model.parameters(), *grads):
                p.grad = sum(g) / len(g)
            optimizer.step()
        return model.state_dict()

    averaged, rank0_alone = stepped([0, 1], 2), stepped([0], 2)
    for key, value in nets[NET].items():
        assert torch.allclose(value, averaged[key], rtol=1e-5, atol=1e-7), key
    assert any(not torch.allclose(value, rank0_alone[key], rtol=1e-5, atol=1e-7) for key, value in nets[NET].items())


# ----------------------------------------------------------------------------- bad params


@pytest.mark.parametrize("section, value, message", [
    ("waveglow_config", {"n_group": 6}, r"vocoder\.waveglow_config(\.|: )n_group 6 must divide the hop length 256"),
    ("waveglow_config", {"n_group": 7}, r"vocoder\.waveglow_config(\.|: )n_group must be even"),
    ("waveglow_config", {"n_early_size": 3}, r"vocoder\.waveglow_config(\.|: )n_early_size must be even"),
    ("waveglow_config", {"n_early_size": 4, "n_early_every": 1},
     r"vocoder\.waveglow_config(\.|: ).*n_early_size 4 every 1 flows leaves 0 channels"),
    ("waveglow_config", {"WN_config": {"n_layers": 2, "n_channels": 16, "kernel_size": 4}},
     r"vocoder\.waveglow_config(\.|: )WN_config\.kernel_size must be odd"),
    ("data_config", {"hop_length": 128}, r"vocoder\.data_config: hop_length must be 256"),
    ("data_config", {"segment_length": 4100}, r"data_config\.segment_length \(4100\) must be a multiple of "
                                              r"waveglow_config\.n_group \(8\)"),
    ("data_config", {"win_length": 2048}, r"vocoder\.data_config: win_length \(2048\) must not exceed filter_length"),
], ids=["n_group-not-dividing-256", "n_group-odd", "n_early_size-odd", "no-channels-left", "kernel_size-even",
        "hop_length-not-256", "segment_length-not-a-multiple-of-n_group", "win_length-over-filter_length"])
def test_params_that_cannot_build_a_waveglow_are_an_error_naming_the_key(train_corpus, tmp_path, feature_cache,
                                                                           section, value, message):
    data = wg_data(train_corpus, tmp_path, feature_cache)
    data["vocoder"][section] = {**data["vocoder"][section], **value}
    if section == "waveglow_config" and value.get("n_group") in (6, 7):
        data["vocoder"]["data_config"]["segment_length"] = 4116  # a multiple of 6 and 7: only n_group is wrong
    with pytest.raises((ConfigError, VocoderError), match=message):
        train(parse_params(data), train_corpus)  # params validation, or the trainer before any work
    assert not (tmp_path / "storage").exists() and not (tmp_path / "logs").exists()


def test_a_run_that_cannot_start_says_why(train_corpus, tmp_path, feature_cache):
    with pytest.raises(VocoderError, match=r"8 training clips cannot fill one batch of vocoder.batch_size 9"):
        train(with_features(wg_params(train_corpus, tmp_path, feature_cache, batch_size=9), train_corpus),
              train_corpus)
    with pytest.raises(VocoderError, match=r"12 clips have no vocoder features in .*run the waveglow stage"):
        train(wg_params(train_corpus, tmp_path, tmp_path / "empty_cache"), train_corpus)
    assert not (tmp_path / "storage").exists()

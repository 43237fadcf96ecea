"""The trainer on a tiny corpus, on CPU: it learns, it resumes exactly, two DDP ranks stay identical,
and it fine-tunes from an upstream 2.3 checkpoint into extended tables."""
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from model.upstream import StateDictMismatchError, read_checkpoint
from tasks.core.checkpoints import CheckpointStore
from tasks.core.config import load_params
from tasks.core.storage import open_storage
from tasks.training.corpus import Corpus, TextAudioDataset, collate
from tasks.training.train import DATA_DIRS, build_nets, build_setup, init_from_upstream, run_id_for, train, train_step
from tests.train_corpus import run_spec, tiny_params

REPO = Path(__file__).resolve().parents[3]
G_0 = REPO / "tests" / "data" / "conformance" / "bv2_23_tiny" / "G_0.pth"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: steady timings on a shared 2-core machine, and the same kernels in
    every process of a test (in-process runs and subprocesses alike)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def corpus_of(root: Path) -> Corpus:
    return Corpus.open(*(root / rel for rel in DATA_DIRS.values()))


def batches_per_epoch(root: Path, batch_size: int = 4) -> int:
    from tasks.training.corpus import BucketSampler

    params = load_params(root / "params.yaml")
    return len(BucketSampler(TextAudioDataset(corpus_of(root), "train").lengths, batch_size,
                             params.train.bucket_boundaries))


@pytest.mark.slow
def test_the_loss_on_a_fixed_batch_falls(train_corpus, tmp_path):
    params = tiny_params(train_corpus, tmp_path, learning_rate=1e-3)
    corpus = corpus_of(train_corpus)
    batch = collate([TextAudioDataset(corpus, "train")[i] for i in range(2)])
    torch.manual_seed(0)
    setup = build_setup(params, build_nets(params, corpus), torch.device("cpu"), train_corpus)
    totals = []
    for step in range(30):
        losses, images = train_step(setup, batch, step)
        assert all(torch.isfinite(v) for v in losses.values())
        totals.append(losses["g/total"].item())
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    assert last < 0.85 * first, totals
    assert images["all/attn"].shape == (batch["spec"].shape[2], batch["phones"].shape[1])


def test_run_id_follows_what_is_computed_not_how_long(train_corpus, tmp_path):
    base = tiny_params(train_corpus, tmp_path)
    longer = tiny_params(train_corpus, tmp_path, max_steps=1000, save_interval=7, num_workers=2)
    assert run_id_for(base, train_corpus) == run_id_for(longer, train_corpus)
    assert run_id_for(base, train_corpus).startswith("bert-vits2-2.3-")
    assert run_id_for(tiny_params(train_corpus, tmp_path, learning_rate=1e-3), train_corpus) != run_id_for(base, train_corpus)
    assert run_id_for(tiny_params(train_corpus, tmp_path, model={"hidden_channels": 48}), train_corpus) \
        != run_id_for(base, train_corpus)


@pytest.mark.slow
def test_a_resumed_run_continues_exactly_as_an_uninterrupted_one(train_corpus, tmp_path):
    # 8 train clips in batches of 4, padded per bucket: 3 steps an epoch, so stopping at 3 is on an
    # epoch boundary (before the scheduler's epoch step) and at 4 mid-epoch; 6 crosses another.
    per_epoch = batches_per_epoch(train_corpus)
    stops = (3, 4)
    assert {s % per_epoch == 0 for s in stops} == {True, False}
    common = dict(save_interval=100, eval_interval=100, log_interval=1)
    def run(work, max_steps):  # -> (result, the losses of every step this call trained)
        steps = []
        return train(tiny_params(train_corpus, work, max_steps=max_steps, **common), train_corpus, steps.append), steps

    full, full_steps = run(tmp_path / "full", 6)
    assert [h["step"] for h in full_steps] == [1, 2, 3, 4, 5, 6] and full.epoch == 5 // per_epoch
    for stop in stops:
        work = tmp_path / f"stop{stop}"
        first, _ = run(work, stop)
        assert first.step == stop and first.manifest["step"] == stop  # the end of a run is always saved
        resumed, resumed_steps = run(work, 6)
        assert [h["step"] for h in resumed_steps] == list(range(stop + 1, 7))
        for a, b in zip(full_steps[stop:], resumed_steps):
            for key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), (stop, a["step"], key)
        for name, net in full.nets.items():
            for (k, p), q in zip(net.state_dict().items(), resumed.nets[name].state_dict().values()):
                assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), (stop, name, k)
    # running again with nothing left to do trains nothing and keeps the checkpoint
    again, again_steps = run(tmp_path / "full", 6)
    assert again_steps == [] and again.step == 6


@pytest.mark.slow
def test_checkpoints_hold_the_run_state_and_keep_the_best(train_corpus, tmp_path):
    params = tiny_params(train_corpus, tmp_path, max_steps=6, save_interval=1, eval_interval=1, keep_best=2)
    result = train(params, train_corpus)
    store = CheckpointStore(open_storage(f"file://{tmp_path}/storage"), result.run_id)
    bundles = store.list_bundles()
    vals = {m["step"]: m["metrics"]["val_loss"] for m in bundles}
    assert 6 in vals and len(vals) <= 3 and all(v is not None for v in vals.values())
    nets, state, manifest = store.load()
    assert set(nets) == {"G", "D", "DUR"}  # no WavLM model configured: no WD
    # saved right after step 6: the sampler's epoch and its position in it (the batches consumed)
    epoch = (6 - 1) // batches_per_epoch(train_corpus)
    assert state["step"] == 6 and state["sampler"]["epoch"] == epoch
    assert state["sampler"]["position"] == 6 - epoch * batches_per_epoch(train_corpus)
    assert len(state["rng"]) == 1
    assert set(state["optimizers"]) == set(state["schedulers"]) == {"G", "D", "DUR"}
    assert state["speakers"] == corpus_of(train_corpus).speakers
    assert state["schedulers"]["G"]["last_epoch"] == epoch  # stepped once per finished epoch
    assert manifest["metrics"]["val_loss"] == pytest.approx(result.val_loss)
    logs = list((tmp_path / "logs" / result.run_id).glob("events.out.tfevents.*"))
    assert logs and logs[0].stat().st_size > 1000  # scalars, images and audio went to TensorBoard


def _python_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(train_corpus, tmp_path):
    """SIGKILL a training process after its first checkpoint; the rerun ends where an uninterrupted
    run ends, bit for bit."""
    common = dict(max_steps=6, save_interval=2, eval_interval=100, log_interval=100)
    reference = train(tiny_params(train_corpus, tmp_path / "ref", **common), train_corpus)

    work = tmp_path / "killed"
    params = tiny_params(train_corpus, work, **common)
    params_path = work / "params.yaml"
    params_path.parent.mkdir(parents=True, exist_ok=True)
    params_path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    # the params file lives outside the corpus: point its data-relative paths back at the corpus
    for rel in DATA_DIRS.values():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).symlink_to(train_corpus / rel)
    latest = work / "storage" / "runs" / reference.run_id / "latest.json"
    cmd = [sys.executable, "-m", "tasks.training.train", "--params", str(params_path)]
    proc = subprocess.Popen(cmd, env=_python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0].decode()
    assert latest.exists(), out[-3000:]
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < 6, "the run finished before it could be killed"

    rerun = subprocess.run(cmd, env=_python_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resumed run {reference.run_id} at step {killed_at}" in rerun.stderr
    store = CheckpointStore(open_storage(f"file://{work}/storage"), reference.run_id)
    nets, state, _ = store.load()
    assert state["step"] == 6
    for name, net in reference.nets.items():
        for key, value in net.state_dict().items():
            assert torch.allclose(nets[name][key], value, rtol=1e-6, atol=1e-7), (name, key)


@pytest.mark.slow
def test_two_ddp_processes_keep_identical_parameters(train_corpus, tmp_path):
    params = tiny_params(train_corpus, tmp_path, max_steps=3, save_interval=100, eval_interval=100, batch_size=2)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    for rel in DATA_DIRS.values():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).symlink_to(train_corpus / rel)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "tasks" / "training" / "ddp_worker.py"), str(params_path), str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=_python_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["params"] == ranks[1]["params"] and set(ranks[0]["params"]) == {"G", "D", "DUR"}
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank trained on its own share of the data
    store = CheckpointStore(open_storage(f"file://{tmp_path}/storage"), ranks[0]["run_id"])
    nets, state, _ = store.load()
    assert len(state["rng"]) == 2 and state["world_size"] == 2  # every rank's RNG state, gathered
    digest = hashlib.sha256(b"".join(nets["G"][k].numpy().tobytes() for k in sorted(nets["G"]))).hexdigest()
    assert digest == ranks[0]["params"]["G"]


@pytest.fixture(scope="module")
def upstream_sized_corpus(train_corpus, tmp_path_factory):
    """The same utterances with the STFT of the upstream tiny checkpoint (n_fft 2048, hop 512)."""
    root = tmp_path_factory.mktemp("upstream_sized")
    for rel in ("data/ingest", "data/text", "data/bert"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(train_corpus / rel)
    data = yaml.safe_load((train_corpus / "params.yaml").read_text())
    data["features"]["spec"].update(n_fft=2048, hop_length=512, win_length=2048, n_mels=128)
    config = json.loads((G_0.parent / "config.json").read_text())["model"]
    data["model"] = {k: config[k] for k in ("inter_channels", "hidden_channels", "filter_channels", "n_heads",
                                            "n_layers", "kernel_size", "p_dropout", "resblock",
                                            "resblock_kernel_sizes", "resblock_dilation_sizes", "upsample_rates",
                                            "upsample_initial_channel", "upsample_kernel_sizes", "gin_channels")}
    data["model"]["disc_divisor"] = 16
    data["train"].update(segment_size=16 * 512, bucket_boundaries=[16, 60, 100, 1000])
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    run_spec(root, root / "data/spec")
    return root


@pytest.mark.slow
def test_fine_tuning_from_upstream_resizes_the_allowed_tables(upstream_sized_corpus, tmp_path, caplog):
    root = upstream_sized_corpus
    corpus = corpus_of(root)
    assert len(corpus.speakers) == 8 and len(corpus.symbols.symbols) > 112
    init = {"G": str(G_0), "reinit": ["enc_p.*bert_proj"]}  # 1024-wide upstream BERT vs 384 here
    params = tiny_params(root, tmp_path, max_steps=2, save_interval=100, eval_interval=100, init_from=init)
    steps = []
    with caplog.at_level(logging.WARNING):
        result = train(params, root, steps.append)
    for key, old, new in [("emb_g.weight", 4, 8), ("enc_p.emb.weight", 112, len(corpus.symbols.symbols)),
                          ("enc_p.tone_emb.weight", 12, 15), ("enc_p.language_emb.weight", 3, 4)]:
        assert f"{key} resized [{old}, " in caplog.text and f"-> [{new}, " in caplog.text, key
    assert "re-initialising 6 keys" in caplog.text
    assert result.step == 2 and len(steps) == 2 and all(torch.isfinite(torch.tensor(h["g/total"])) for h in steps)

    # what was loaded is upstream's: check before training moved it
    torch.manual_seed(0)
    nets = build_nets(params, corpus)
    init_from_upstream(nets, params, root)
    upstream = read_checkpoint(G_0)["model"]
    g = nets["G"].state_dict()
    assert torch.equal(g["enc_p.emb.weight"][:112], upstream["enc_p.emb.weight"])
    assert torch.equal(g["emb_g.weight"][:4], upstream["emb_g.weight"])
    assert torch.equal(g["flow.flows.0.enc.attn_layers.0.emb_rel_k"], upstream["flow.flows.0.enc.attn_layers.0.emb_rel_k"])

    strict = tiny_params(root, tmp_path, init_from={"G": str(G_0), "allow_resize": [], "reinit": ["enc_p.*bert_proj"]})
    with pytest.raises(StateDictMismatchError, match="emb_g.weight"):
        init_from_upstream(build_nets(strict, corpus), strict, root)


@pytest.mark.parametrize("variant", ["vits2", "vits"])
def test_the_other_variants_train(train_corpus, tmp_path, variant):
    params = tiny_params(train_corpus, tmp_path, model={"variant": variant})
    corpus = corpus_of(train_corpus)
    batch = collate([TextAudioDataset(corpus, "train", use_bert=False)[i] for i in range(2)])
    nets = build_nets(params, corpus)
    assert set(nets) == ({"G", "D", "DUR"} if variant == "vits2" else {"G", "D"})
    assert not hasattr(nets["G"].enc_p, "bert_proj")
    setup = build_setup(params, nets, torch.device("cpu"), train_corpus)
    losses, _ = train_step(setup, batch, 0)
    assert all(torch.isfinite(v) for v in losses.values())


def test_a_wavlm_model_adds_upstreams_wavlm_terms(train_corpus, tmp_path):
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                         num_buckets=16, max_bucket_distance=32)
    WavLMModel(config).save_pretrained(tmp_path / "wavlm")
    slm = {"model": str(tmp_path / "wavlm"), "hidden": 16, "nlayers": 3, "initial_channel": 8}
    params = tiny_params(train_corpus, tmp_path, model={"slm": slm})
    corpus = corpus_of(train_corpus)
    nets = build_nets(params, corpus)
    assert set(nets) == {"G", "D", "DUR", "WD"}
    setup = build_setup(params, nets, torch.device("cpu"), train_corpus)
    batch = collate([TextAudioDataset(corpus, "train")[i] for i in range(2)])
    before = [p.detach().clone() for p in nets["WD"].parameters()]
    losses, _ = train_step(setup, batch, 0)
    assert losses["d/wd"] > 0 and losses["g/lm"] > 0 and losses["g/lm_gen"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, nets["WD"].parameters()))  # WD stepped
    assert all(not p.requires_grad for p in setup.wl.wavlm.parameters())  # WavLM stays frozen


def test_params_tie_the_decoder_to_the_hop_length(train_corpus):
    from tasks.core.config import ConfigError, parse_params

    data = yaml.safe_load((train_corpus / "params.yaml").read_text())
    data["model"]["upsample_rates"] = [8, 8, 2]
    with pytest.raises(ConfigError, match="product .128. must equal features.spec.hop_length .256."):
        parse_params(data)
    data["model"].update(upsample_rates=[8, 8, 4], n_layers=2)
    with pytest.raises(ConfigError, match="at least 3"):
        parse_params(data)


def test_fine_tuning_reads_upstream_checkpoints_from_s3(upstream_sized_corpus, tmp_path, s3_endpoint):
    import boto3

    boto3.client("s3").create_bucket(Bucket="vf-init")
    boto3.client("s3").upload_file(str(G_0), "vf-init", "bv2/G_0.pth")
    root = upstream_sized_corpus
    params = tiny_params(root, tmp_path, init_from={"G": "s3://vf-init/bv2/G_0.pth", "reinit": ["enc_p.*bert_proj"]})
    nets = build_nets(params, corpus_of(root))
    reports = init_from_upstream(nets, params, root)
    assert set(reports) == {"G"} and "emb_g.weight" in reports["G"].resized
    assert torch.equal(nets["G"].state_dict()["dec.conv_pre.bias"], read_checkpoint(G_0)["model"]["dec.conv_pre.bias"])

import hashlib
import io
import json
import os
import random
import subprocess
import uuid

import boto3
import numpy as np
import pytest
import torch

from tasks.core.checkpoints import CheckpointError, CheckpointStore, lineage, rng_state, set_rng_state
from tasks.core.storage import MiB, LocalStorage, open_storage

LINEAGE = {"git_commit": "0" * 40, "git_dirty": False, "dvc_lock_sha256": None, "params_sha256": "ab" * 32}


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    if request.param == "file":
        return LocalStorage(tmp_path / "store")
    request.getfixturevalue("s3_endpoint")
    bucket = f"vf-ckpt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return open_storage(f"s3://{bucket}/team/exp")


def tiny_training(seed: int = 0):
    """A Linear model, AdamW (stepped once, so it has state) and a scheduler."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    model(torch.randn(2, 4)).pow(2).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def training_state(opt, sched, step: int) -> dict:
    return {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "epoch": 2,
            "sampler": {"epoch": 2, "position": 17, "order": [3, 1, 2]}, "rng": [rng_state(), rng_state()],
            "note": None, "flags": (True, 1.5)}


def nets_of(seed: int) -> dict:
    torch.manual_seed(seed)
    return {"G": torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)).state_dict(),
            "D": torch.nn.Linear(8, 1).state_dict()}


def assert_nets_equal(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name in want:
        assert list(got[name]) == list(want[name])  # key order survives
        for key, t in want[name].items():
            assert got[name][key].dtype == t.dtype and torch.equal(got[name][key], t), (name, key)


def step_folders(storage, run="r1") -> list[int]:
    steps = set()
    for key in storage.list(f"runs/{run}/"):
        part = key.split("/")[2]
        if part.startswith("step_"):
            steps.add(int(part.removeprefix("step_")))
    return sorted(steps)


def test_save_load_round_trip_with_weights_only(storage):
    model, opt, sched = tiny_training()
    nets = {"G": model.state_dict(), **{k: v for k, v in nets_of(1).items() if k == "D"}}
    state = training_state(opt, sched, 100)
    store = CheckpointStore(storage, "r1")
    assert store.latest() is None and store.list_bundles() == []
    manifest = store.save(100, nets, state, {"val_loss": np.float32(0.25), "train_loss": torch.tensor(1.5)},
                          LINEAGE)
    assert set(manifest["objects"]) == {"G.safetensors", "D.safetensors", "state.pt"}
    assert manifest["metrics"] == {"val_loss": 0.25, "train_loss": 1.5}
    assert manifest["step"] == 100 and manifest["run_id"] == "r1" and manifest["lineage"] == LINEAGE

    # The stored bytes: state.pt loads with weights_only=True on its own; hashes match the manifest.
    raw = storage.read_bytes("runs/r1/step_00000100/state.pt")
    assert torch.load(io.BytesIO(raw), weights_only=True)["step"] == 100
    for name, info in manifest["objects"].items():
        data = storage.read_bytes(f"runs/r1/step_00000100/{name}")
        assert info == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    pointer = json.loads(storage.read_bytes("runs/r1/latest.json"))
    manifest_bytes = storage.read_bytes("runs/r1/step_00000100/manifest.json")
    assert pointer["step"] == 100 and pointer["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()

    fresh = CheckpointStore(storage, "r1")  # a new process resuming
    assert fresh.latest() == json.loads(manifest_bytes) == manifest
    got_nets, got_state, got_manifest = fresh.load()
    assert got_manifest == manifest
    assert_nets_equal(got_nets, nets)

    model2, opt2, sched2 = tiny_training(seed=5)
    model2.load_state_dict(got_nets["G"])
    opt2.load_state_dict(got_state["optimizer"])
    sched2.load_state_dict(got_state["scheduler"])
    for p, q in zip(model.parameters(), model2.parameters()):
        a, b = opt.state[p], opt2.state[q]
        assert set(a) == set(b) == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert got_state["sampler"] == state["sampler"] and got_state["flags"] == (True, 1.5)
    assert got_state["note"] is None and got_state["epoch"] == 2


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    store = CheckpointStore(LocalStorage(tmp_path), "rng")
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    store.save(1, nets_of(0), {"rng": [rng_state()]}, {}, LINEAGE)
    want = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    _, state, _ = CheckpointStore(LocalStorage(tmp_path), "rng").load()
    set_rng_state(state["rng"][0])
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == want


def test_state_that_weights_only_cannot_load_is_refused_before_writing(tmp_path):
    storage = LocalStorage(tmp_path)
    store = CheckpointStore(storage, "r1")
    with pytest.raises(TypeError, match=r"state\['rng'\]\[0\]: numpy.ndarray .*weights_only"):
        store.save(1, nets_of(0), {"rng": [np.zeros(3)]}, {}, LINEAGE)
    with pytest.raises(TypeError, match=r"state\['s'\]: builtins.set"):
        store.save(1, nets_of(0), {"s": {1, 2}}, {}, LINEAGE)
    assert list(storage.list()) == []


class MockCrashingStorage:
    """The storage, except that writing a key ending in `fail_on` raises like a dying process."""

    def __init__(self, inner, fail_on: str):
        self.inner, self.fail_on = inner, fail_on

    def write_bytes(self, key, data, **kwargs):
        if key.endswith(self.fail_on):
            raise OSError(f"simulated crash writing {key}")
        return self.inner.write_bytes(key, data, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("fail_on", ["D.safetensors", "state.pt", "manifest.json", "latest.json"])
def test_a_crash_mid_save_leaves_the_previous_bundle_as_latest(storage, fail_on):
    first = nets_of(1)
    store = CheckpointStore(storage, "r1")
    store.save(10, first, {"step": 10}, {"val_loss": 2.0}, LINEAGE)
    crashing = CheckpointStore(MockCrashingStorage(storage, fail_on), "r1")
    with pytest.raises(OSError, match="simulated crash"):
        crashing.save(20, nets_of(2), {"step": 20}, {"val_loss": 1.0}, LINEAGE)

    resumed = CheckpointStore(storage, "r1")  # the restarted trainer
    assert resumed.latest()["step"] == 10
    nets, state, manifest = resumed.load()
    assert manifest["step"] == 10 and state == {"step": 10}
    assert_nets_equal(nets, first)
    complete = [m["step"] for m in resumed.list_bundles()]
    assert complete == ([10, 20] if fail_on == "latest.json" else [10])
    assert step_folders(storage) == [10, 20]  # the partial folder is still there...

    # ... until training goes on: the same step is rewritten whole, and a later save's retention
    # removes what the crash left.
    resumed.save(20, nets_of(3), {"step": 20}, {"val_loss": 1.5}, LINEAGE)
    assert_nets_equal(resumed.load()[0], nets_of(3))
    resumed.save(30, nets_of(4), {"step": 30}, {}, LINEAGE, keep_best=1)
    assert step_folders(storage) == [20, 30]  # latest + best val_loss (20: 1.5 < 10: 2.0)


def test_an_orphan_folder_older_than_latest_is_removed(storage):
    store = CheckpointStore(storage, "r1")
    store.save(10, nets_of(1), {}, {}, LINEAGE)
    storage.write_bytes("runs/r1/step_00000015/G.safetensors", b"partial")  # crash leftover
    storage.write_bytes("runs/r1/step_00000099/G.safetensors", b"partial")  # beyond latest: not touched
    store.save(20, nets_of(2), {}, {}, LINEAGE)
    assert step_folders(storage) == [20, 99]
    assert [m["step"] for m in store.list_bundles()] == [20]


@pytest.mark.parametrize("name", ["G.safetensors", "state.pt"])
def test_a_corrupted_object_is_named_on_load(storage, name):
    store = CheckpointStore(storage, "r1")
    store.save(5, nets_of(1), {"step": 5, "x": torch.arange(100.0)}, {}, LINEAGE)
    key = f"runs/r1/step_00000005/{name}"
    data = bytearray(storage.read_bytes(key))
    data[-3] ^= 0xFF  # same size, one flipped bit pattern in the tensor data
    storage.write_bytes(key, bytes(data))
    with pytest.raises(CheckpointError, match=rf"object '{name}' is corrupt .*step_00000005/{name}.*sha256"):
        store.load()
    if name.endswith(".safetensors"):
        store.load(verify=False)  # still parses: only the hash check catches it

    storage.write_bytes(key, bytes(data[:-10]))  # truncated: latest() refuses it too
    with pytest.raises(CheckpointError, match=rf"object '{name}' has \d+ bytes"):
        store.latest()


def test_retention_keeps_latest_and_best_by_val_loss(storage):
    store = CheckpointStore(storage, "r1")
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 2.0, 5: 3.0, 6: float("nan"), 7: None}
    for step, loss in losses.items():
        metrics = {} if loss is None else {"val_loss": loss}
        store.save(step, {"G": {"w": torch.full((2,), float(step))}}, {"step": step}, metrics, LINEAGE,
                   keep_best=2)
    assert step_folders(storage) == [2, 4, 7]  # latest (7, no val_loss) + best two (2, 4)
    assert [m["step"] for m in store.list_bundles()] == [2, 4, 7]
    assert store.list_bundles()[-1]["metrics"] == {}
    nets, _, _ = store.load(2)
    assert torch.equal(nets["G"]["w"], torch.full((2,), 2.0))
    with pytest.raises(CheckpointError, match="step 3 .*no complete bundle"):
        store.load(3)
    store.save(8, {"G": {"w": torch.zeros(2)}}, {}, {"val_loss": 0.5}, LINEAGE, keep_best=1)
    assert step_folders(storage) == [8]  # latest is also the best


def test_large_objects_go_multipart_on_s3(s3_endpoint):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="vf-multipart")
    storage = open_storage("s3://vf-multipart/ckpt", multipart_threshold=5 * MiB, part_size=5 * MiB)
    big = {"w": torch.arange(3_000_000, dtype=torch.float32)}  # 12 MB: three 5 MiB parts
    manifest = CheckpointStore(storage, "mp").save(1, {"G": big}, {"step": 1}, {}, LINEAGE)
    etag = s3.head_object(Bucket="vf-multipart", Key="ckpt/runs/mp/step_00000001/G.safetensors")["ETag"]
    assert etag.strip('"').endswith("-3")
    small = s3.head_object(Bucket="vf-multipart", Key="ckpt/runs/mp/step_00000001/state.pt")["ETag"]
    assert "-" not in small
    body = s3.get_object(Bucket="vf-multipart", Key="ckpt/runs/mp/step_00000001/G.safetensors")["Body"].read()
    assert manifest["objects"]["G.safetensors"]["sha256"] == hashlib.sha256(body).hexdigest()
    nets, _, _ = CheckpointStore(storage, "mp").load()
    assert torch.equal(nets["G"]["w"], big["w"])


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false",
                    *args], cwd=cwd, check=True, capture_output=True)


def test_lineage_records_code_and_params_and_never_the_environment(tmp_path, monkeypatch):
    secret = "sekrit-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("VITSFLOW_TOKEN", secret)
    outside = lineage(tmp_path)
    assert outside == {"git_commit": None, "git_dirty": False, "dvc_lock_sha256": None, "params_sha256": None}

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("audio: {}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "params.yaml")
    _git(repo, "commit", "-q", "-m", "init")
    clean = lineage(repo)
    assert set(clean) == {"git_commit", "git_dirty", "dvc_lock_sha256", "params_sha256"}
    assert len(clean["git_commit"]) == 40 and clean["git_dirty"] is False and clean["dvc_lock_sha256"] is None
    assert clean["params_sha256"] == hashlib.sha256(b"audio: {}\n").hexdigest()
    (repo / "dvc.lock").write_bytes(b"schema: '2.0'\n")
    dirty = lineage(repo)
    assert dirty["git_dirty"] is True and dirty["dvc_lock_sha256"] == hashlib.sha256(b"schema: '2.0'\n").hexdigest()

    # Nothing from the environment, in the lineage or anywhere in a saved bundle's manifest.
    text = json.dumps(dirty)
    assert not [k for k, v in os.environ.items() if len(v) >= 8 and v in text]
    storage = LocalStorage(tmp_path / "store")
    CheckpointStore(storage, "r1").save(1, nets_of(0), {}, {}, dirty)
    for key in storage.list():
        if key.endswith(".json"):
            assert secret not in storage.read_bytes(key).decode()


def test_run_ids_and_net_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="run_id"):
        CheckpointStore(LocalStorage(tmp_path), "../escape")
    store = CheckpointStore(LocalStorage(tmp_path), "r1")
    with pytest.raises(ValueError, match="name 'state'"):
        store.save(1, {"state": {"w": torch.zeros(1)}}, {}, {}, LINEAGE)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        store.load()


def test_tied_and_non_contiguous_tensors_are_saved(tmp_path):
    w = torch.randn(4, 6)
    sd = {"a": w, "b": w, "c": w.t(), "d": w[:, 1]}  # shared memory and views, as tied weights give
    store = CheckpointStore(LocalStorage(tmp_path), "r1")
    store.save(1, {"G": sd}, {}, {}, LINEAGE)
    nets, _, _ = store.load()
    assert all(torch.equal(nets["G"][k], v) for k, v in sd.items())

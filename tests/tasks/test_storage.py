import boto3

from tasks.config import load_params
from tasks.ingest import plan_ingest
from tasks.storage import LocalStorage, open_storage
from tests.helpers import ljspeech_subset, write_params


def test_local_writes_are_atomic_and_listed(tmp_path):
    store = LocalStorage(tmp_path)
    store.write_bytes("a/b.bin", b"123")
    assert store.read_bytes("a/b.bin") == b"123" and store.exists("a/b.bin")
    assert list(store.list()) == ["a/b.bin"]  # no temporary files left behind


def test_s3_storage_round_trips_against_a_real_endpoint(s3_endpoint):
    boto3.client("s3").create_bucket(Bucket="vf-store")
    store = open_storage("s3://vf-store/runs")
    store.write_bytes("x/y.json", b"{}")
    assert store.read_bytes("x/y.json") == b"{}"
    assert list(store.list()) == ["x/y.json"] and store.exists("x/y.json") and not store.exists("nope")


def test_ingest_plans_a_dataset_from_an_s3_prefix(s3_endpoint, tmp_path, shared_speech):
    ids = ljspeech_subset(shared_speech, tmp_path / "lj", 3)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="vf-corpus")
    for path in (tmp_path / "lj").rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "vf-corpus", f"lj/{path.relative_to(tmp_path / 'lj').as_posix()}")
    params = write_params(tmp_path, [{"name": "lj", "language": "en", "path": "s3://vf-corpus/lj",
                                      "format": "ljspeech", "speaker": "lj"}])
    plan = plan_ingest(load_params(params), tmp_path)
    assert [i.utt.utt_id for i in plan.items] == [f"lj/wavs/{i}" for i in ids]
    data = plan.storages["lj"].read_bytes(plan.items[0].utt.audio)
    assert data[:4] == b"RIFF"

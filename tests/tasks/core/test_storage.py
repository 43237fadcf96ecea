import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tasks.core.config import StorageConfig, load_params
from tasks.core.storage import MiB, LocalStorage, S3Storage, StorageError, is_transient, open_storage, storage_from_config
from tasks.prep.ingest import plan_ingest
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


def ljspeech_in_bucket(real_speech, tmp_path, bucket: str):
    """Three LJSpeech clips as an ljspeech dataset under s3://<bucket>/lj; returns (ids, s3 client)."""
    ids = ljspeech_subset(real_speech, tmp_path / "lj", 3)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for path in (tmp_path / "lj").rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"lj/{path.relative_to(tmp_path / 'lj').as_posix()}")
    return ids, s3


def test_ingest_plans_a_dataset_from_an_s3_prefix(s3_endpoint, tmp_path, real_speech):
    ids, _ = ljspeech_in_bucket(real_speech, tmp_path, "vf-corpus")
    params = write_params(tmp_path, [{"name": "lj", "language": "en", "path": "s3://vf-corpus/lj",
                                      "format": "ljspeech", "speaker": "lj"}])
    plan = plan_ingest(load_params(params), tmp_path)
    assert [i.utt.utt_id for i in plan.items] == [f"lj/wavs/{i}" for i in ids]
    data = plan.storages["lj"].read_bytes(plan.items[0].utt.audio)
    assert data[:4] == b"RIFF"


def test_planning_an_s3_corpus_downloads_no_audio_and_sees_a_changed_object(s3_endpoint, tmp_path, real_speech,
                                                                           monkeypatch):
    from tasks.core.storage import S3Storage

    ids, s3 = ljspeech_in_bucket(real_speech, tmp_path, "vf-etag")
    params = load_params(write_params(tmp_path, [{"name": "lj", "language": "en", "path": "s3://vf-etag/lj",
                                                  "format": "ljspeech", "speaker": "lj"}]))
    list_file = S3Storage.read_bytes

    def no_audio(self, key):
        assert not key.endswith(".wav"), f"planning downloaded {key}"
        return list_file(self, key)

    monkeypatch.setattr(S3Storage, "read_bytes", no_audio)
    first = {i.utt.utt_id: i.key for i in plan_ingest(params, tmp_path).items}
    assert plan_ingest(params, tmp_path).items[0].key == first[f"lj/wavs/{ids[0]}"]  # stable
    s3.put_object(Bucket="vf-etag", Key=f"lj/wavs/{ids[1]}.wav",
                  Body=(tmp_path / "lj" / "wavs" / f"{ids[0]}.wav").read_bytes())
    second = {i.utt.utt_id: i.key for i in plan_ingest(params, tmp_path).items}
    assert [u for u in first if first[u] != second[u]] == [f"lj/wavs/{ids[1]}"]


@pytest.fixture(params=["file", "s3"])
def any_storage(request, tmp_path):
    if request.param == "file":
        return LocalStorage(tmp_path / "root")
    request.getfixturevalue("s3_endpoint")
    boto3.client("s3").create_bucket(Bucket="vf-any")
    store = open_storage("s3://vf-any/p")
    store.delete_prefix("d")
    return store


def test_size_delete_and_delete_prefix(any_storage):
    s = any_storage
    for key in ("d/a/1.bin", "d/a/2.bin", "d/ab/3.bin", "d/b.bin"):
        s.write_bytes(key, b"12345")
    assert s.size("d/a/1.bin") == 5
    with pytest.raises(FileNotFoundError):
        s.size("d/nope.bin")
    s.delete("d/b.bin")
    s.delete("d/b.bin")  # deleting what is gone is fine
    assert not s.exists("d/b.bin")
    assert s.delete_prefix("d/a") == 2  # a folder: d/ab/ is not under it
    assert list(s.list("d/")) == ["d/ab/3.bin"]
    with pytest.raises(StorageError, match="refusing"):
        s.delete_prefix("/")
    assert s.delete_prefix("d/missing") == 0


class FlakyClient:
    """A boto3 client whose first `failures` uploads fail with a connection error."""

    def __init__(self, inner, failures, error=None):
        self.inner, self.failures, self.calls = inner, failures, 0
        self.error = error or EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    def upload_fileobj(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.inner.upload_fileobj(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_s3_puts_are_retried_with_backoff_on_connection_errors(s3_endpoint):
    boto3.client("s3").create_bucket(Bucket="vf-retry")
    store = S3Storage("vf-retry", "p", retries=3, backoff_s=1.0, max_backoff_s=3.0)
    delays = []
    store.sleep = delays.append
    store.client = FlakyClient(store.client, failures=3)
    store.write_bytes("k.bin", b"data")
    assert store.read_bytes("k.bin") == b"data" and store.client.calls == 4
    assert len(delays) == 3 and all(0 <= d <= cap for d, cap in zip(delays, (1.0, 2.0, 3.0)))

    store.client = FlakyClient(store.client.inner, failures=10)  # bounded: gives up after `retries`
    with pytest.raises(EndpointConnectionError):
        store.write_bytes("k2.bin", b"data")
    assert store.client.calls == 4


def test_s3_errors_that_will_not_heal_are_not_retried(s3_endpoint):
    store = S3Storage("vf-no-such-bucket", "p", retries=3)
    store.sleep = lambda s: pytest.fail("slept on a permanent error")
    store.client = FlakyClient(store.client, failures=0)
    with pytest.raises(StorageError, match="s3://vf-no-such-bucket/p/k.bin.*NoSuchBucket"):
        store.write_bytes("k.bin", b"x")
    assert store.client.calls == 1
    slow = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
    denied = ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")
    assert is_transient(slow) and not is_transient(denied)


def test_transfer_config_and_storage_from_config(tmp_path, monkeypatch):
    monkeypatch.delenv("VITSFLOW_STORAGE_URI", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = storage_from_config(StorageConfig(uri="s3://b/x", endpoint_url="http://127.0.0.1:9", region="eu-west-1"),
                                tmp_path, multipart_threshold=16 * MiB, part_size=32 * MiB)
    assert isinstance(store, S3Storage) and store.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert store.client.meta.region_name == "eu-west-1"
    cfg = store.transfer_config()
    assert (cfg.multipart_threshold, cfg.multipart_chunksize) == (16 * MiB, 32 * MiB)
    assert store.transfer_config(part_size=6 * MiB).multipart_chunksize == 6 * MiB
    local = storage_from_config(StorageConfig(uri="file://store"), tmp_path)
    assert isinstance(local, LocalStorage) and local.root == tmp_path / "store"
    monkeypatch.setenv("VITSFLOW_STORAGE_URI", f"file://{tmp_path}/other")
    assert storage_from_config(StorageConfig(), tmp_path).root == tmp_path / "other"


def test_local_sizes_and_hashes_are_the_same_by_relative_absolute_or_unnormalised_key(tmp_path):
    from tasks.core.cache import FileHashes
    from tasks.core.storage import file_sha256

    store = LocalStorage(tmp_path / "ds")
    store.write_bytes("wavs/a.wav", b"RIFF1234")
    (tmp_path / "ds" / "wavs" / "sub").mkdir()
    memo = FileHashes.in_dir(tmp_path / "cache")
    digest = file_sha256(tmp_path / "ds" / "wavs" / "a.wav")
    for key in ("wavs/a.wav", "./wavs//a.wav", str(tmp_path / "ds" / "wavs" / "a.wav")):
        assert store.size(key) == 8
        assert store.content_id(key) == store.content_id(key, memo) == digest
    for missing in ("wavs/nope.wav", "wavs/sub"):  # a folder is not a file either
        with pytest.raises(FileNotFoundError, match=missing.split("/")[-1]):
            store.size(missing)

"""One storage layer for local folders (file://) and S3 (s3://, boto3), behind one interface.

Keys are '/'-separated paths relative to the storage root. Writes are atomic: a local write goes to
a temporary file that is renamed into place (and the folder is fsynced); an S3 object becomes
visible only when its upload completes. Large S3 objects go multipart (`multipart_threshold`,
`part_size`; 8 MiB by default), and every S3 call is retried: botocore's own retry mode
("standard" or "adaptive") per request, plus a bounded loop with exponential backoff and jitter
around each whole put/get for connection errors, timeouts, throttling and 5xx answers.
Credentials come from the environment or an AWS profile, never from params, and are never logged.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, TypeVar

logger = logging.getLogger(__name__)

class HashMemo(Protocol):
    """Remembers files' sha256 (tasks.core.cache.FileHashes, by stat)."""

    def sha256(self, path: Path) -> str: ...


MiB = 1024 * 1024
T = TypeVar("T")


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI."""


class Storage(Protocol):
    uri: str

    def read_bytes(self, key: str) -> bytes: ...
    # part_size: S3's multipart part size (and threshold) for this write; ignored locally.
    def write_bytes(self, key: str, data: bytes, *, part_size: Optional[int] = None) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...  # bytes; FileNotFoundError when absent
    def list(self, prefix: str = "") -> Iterator[str]: ...
    def delete(self, key: str) -> None: ...  # absent keys are fine
    def delete_prefix(self, prefix: str) -> int: ...  # every key under folder `prefix`; returns the count
    def describe(self, key: str) -> str: ...
    # What identifies the object's content, without reading it where that can be avoided: a local
    # file's sha256 (`memo`, e.g. a cache.FileHashes, remembers it by stat), an S3 object's `etag:<ETag>`.
    def content_id(self, key: str, memo: Optional[HashMemo] = None) -> str: ...


def _folder_prefix(uri: str, prefix: str) -> str:
    """`prefix` as a folder ('a/b' -> 'a/b/'); the empty prefix (the whole root) is refused."""
    prefix = prefix.strip("/")
    if not prefix:
        raise StorageError(f"{uri}: refusing to delete everything under the storage root")
    return prefix + "/"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader sees either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would make every artifact private to its writer
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalStorage:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.uri = f"file://{self.root}"
        self._root = str(self.root)

    def _local(self, key: str) -> str:
        """The file of `key`, as a string: plans look up every file of the corpus on each run, and
        building two Paths per file was most of a 10k-file plan. Lists may name absolute local
        files; allowed for local datasets only."""
        return key if os.path.isabs(key) else os.path.join(self._root, key)

    def _path(self, key: str) -> Path:
        return Path(self._local(key))

    def describe(self, key: str) -> str:
        return str(self._path(key))

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def content_id(self, key: str, memo: Optional[HashMemo] = None) -> str:
        path = self._local(key)
        return memo.sha256(path) if memo is not None else file_sha256(Path(path))

    def write_bytes(self, key: str, data: bytes, *, part_size: Optional[int] = None) -> None:
        path = self._path(key)
        atomic_write_bytes(path, data)
        _fsync_dir(path.parent)  # the rename itself survives a power cut before the next write

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def size(self, key: str) -> int:
        try:
            st = os.stat(self._local(key))
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(str(self._path(key)))
        return st.st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        base = self.root / _folder_prefix(self.uri, prefix)
        if not base.is_dir():
            return 0
        count = sum(1 for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base)
        return count

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix
        if not base.exists():
            return
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            yield path.relative_to(self.root).as_posix()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


# S3 error codes worth another try (besides any 5xx / 429 answer).
_TRANSIENT_CODES = {"RequestTimeout", "RequestTimeoutException", "SlowDown", "Throttling", "ThrottlingException",
                    "TooManyRequestsException", "RequestThrottled", "InternalError", "ServiceUnavailable",
                    "BadDigest", "IncompleteBody", "500", "502", "503", "504"}


def is_transient(err: BaseException) -> bool:
    """A connection error, timeout, throttling or server-side error: the same call may succeed later."""
    from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError, HTTPClientError,
                                     IncompleteReadError, ChecksumError)

    if isinstance(err, (BotoConnectionError, HTTPClientError, IncompleteReadError, ChecksumError,
                        ConnectionError, TimeoutError)):
        return True
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    return False


class S3Storage:
    """An S3 bucket/prefix. `multipart_threshold`/`part_size`: objects above the threshold upload in
    parts of `part_size` bytes (S3 wants >= 5 MiB; smaller values are raised to that by s3transfer).
    `retry_mode`/`max_attempts`: botocore's per-request retries; `retries`, `backoff_s`,
    `max_backoff_s`: our loop around each whole put/get (exponential backoff with full jitter)."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: Optional[str] = None, region: Optional[str] = None,
                 *, multipart_threshold: int = 8 * MiB, part_size: int = 8 * MiB, max_concurrency: int = 8,
                 retry_mode: str = "standard", max_attempts: int = 8, retries: int = 4,
                 backoff_s: float = 0.5, max_backoff_s: float = 20.0):
        import boto3
        from botocore.config import Config

        if retry_mode not in ("standard", "adaptive", "legacy"):
            raise StorageError(f"s3://{bucket}: retry_mode {retry_mode!r}: expected 'standard' or 'adaptive'")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.multipart_threshold, self.part_size, self.max_concurrency = multipart_threshold, part_size, max_concurrency
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.sleep: Callable[[float], None] = time.sleep  # tests replace it
        self._etags: Optional[dict[str, str]] = None  # content_id's listing
        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                                   config=Config(retries={"max_attempts": max_attempts, "mode": retry_mode}))

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, retried up to `self.retries` more times on transient errors."""
        attempt = 0
        while True:
            try:
                return call()
            except Exception as err:
                if not is_transient(err) or attempt >= self.retries:
                    raise
                delay = random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt))
                attempt += 1
                # The error text names the bucket/key and the failure, never a credential.
                logger.warning("%s: %s (%s); retry %d/%d in %.2fs", what, type(err).__name__, err,
                               attempt, self.retries, delay)
                self.sleep(delay)

    def transfer_config(self, part_size: Optional[int] = None):
        from boto3.s3.transfer import TransferConfig

        threshold = self.multipart_threshold if part_size is None else min(self.multipart_threshold, part_size)
        return TransferConfig(multipart_threshold=max(1, threshold), multipart_chunksize=part_size or self.part_size,
                              max_concurrency=self.max_concurrency, use_threads=self.max_concurrency > 1)

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"{self.uri}: key {key!r} escapes the storage prefix")
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def content_id(self, key: str, memo: Optional[HashMemo] = None) -> str:
        """`etag:<ETag>` from one listing of the whole prefix (remembered by this object), or a HEAD
        for a key the listing did not have: planning a bucket's corpus downloads nothing."""
        if self._etags is None:
            self._etags = {k: etag for k, _, etag in self.list_versions()}
        if key not in self._etags:
            from botocore.exceptions import ClientError

            try:
                head = self._retrying(f"head {self.describe(key)}",
                                      lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    raise FileNotFoundError(self.describe(key)) from err
                raise
            self._etags[key] = head["ETag"].strip('"')
        return f"etag:{self._etags[key]}"

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        full = self._key(key)
        try:
            return self._retrying(f"get {self.describe(key)}",
                                  lambda: self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read())
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.describe(key)) from None
            raise StorageError(f"{self.describe(key)}: {err}") from None

    def write_bytes(self, key: str, data: bytes, *, part_size: Optional[int] = None) -> None:
        """Upload `data`; above the multipart threshold it goes in parts (`part_size` overrides the
        storage's part size and threshold for this call). S3 publishes an object only whole."""
        import io

        from botocore.exceptions import ClientError

        full, config = self._key(key), self.transfer_config(part_size)
        try:
            self._retrying(f"put {self.describe(key)}",
                           lambda: self.client.upload_fileobj(io.BytesIO(data), self.bucket, full, Config=config))
        except ClientError as err:
            raise StorageError(f"{self.describe(key)}: {err}") from None

    def _head(self, key: str) -> Optional[dict]:
        from botocore.exceptions import ClientError

        full = self._key(key)
        try:
            return self._retrying(f"head {self.describe(key)}",
                                  lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise StorageError(f"{self.describe(key)}: {err}") from None

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(self.describe(key))
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        from botocore.exceptions import ClientError

        full = self._key(key)
        try:
            self._retrying(f"delete {self.describe(key)}",
                           lambda: self.client.delete_object(Bucket=self.bucket, Key=full))
        except ClientError as err:
            raise StorageError(f"{self.describe(key)}: {err}") from None

    def delete_prefix(self, prefix: str) -> int:
        from botocore.exceptions import ClientError

        folder = _folder_prefix(self.uri, prefix)
        keys = [self._key(k) for k in self.list(folder)]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = {"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}
            try:
                answer = self._retrying(f"delete {self.describe(folder)}",
                                        lambda: self.client.delete_objects(Bucket=self.bucket, Delete=batch))
            except ClientError as err:
                raise StorageError(f"{self.describe(folder)}: {err}") from None
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageError(f"{self.describe(folder)}: {len(answer['Errors'])} objects not deleted, e.g. "
                                   f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")
        return len(keys)

    def list(self, prefix: str = "") -> Iterator[str]:
        for key, _, _ in self.list_versions(prefix):
            yield key

    def list_versions(self, prefix: str = "") -> Iterator[tuple[str, int, str]]:
        """(key, size, ETag) of every object under `prefix`, from the listing alone: what tells a
        changed object apart without downloading it (an ETag changes with the content)."""
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(f"{self.prefix}/") if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:], int(obj["Size"]), obj["ETag"].strip('"')


def open_storage(uri: str, root: Path = Path("."), endpoint_url: Optional[str] = None,
                 region: Optional[str] = None, **s3_options: Any) -> Storage:
    """A Storage for `file://PATH`, a plain local path (relative to `root`) or `s3://BUCKET/PREFIX`.
    `s3_options` go to S3Storage (multipart_threshold, part_size, retry_mode, retries, ...) and are
    ignored for local storage."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"{uri}: no bucket name")
        return S3Storage(bucket, prefix, endpoint_url, region, **s3_options)
    path = Path(uri.removeprefix("file://")).expanduser()
    return LocalStorage(path if path.is_absolute() else root / path)


def storage_from_config(cfg: Any, root: Path = Path("."), **s3_options: Any) -> Storage:
    """The storage of params.yaml `storage` (a StorageConfig: uri, endpoint_url, region).
    VITSFLOW_STORAGE_URI overrides the uri, as for the DVC remote (tasks/orchestration/remote.py); the endpoint
    comes from params or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, credentials from the environment."""
    uri = os.environ.get("VITSFLOW_STORAGE_URI") or cfg.uri
    return open_storage(uri, root, getattr(cfg, "endpoint_url", None), getattr(cfg, "region", None), **s3_options)

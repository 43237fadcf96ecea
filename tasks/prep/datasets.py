"""Dataset list readers: bv2_list, ljspeech and jsonl, from a local folder or an s3:// prefix.

A list that is missing stops the stage before any audio work, naming the file. A bad line does
not: a line that is not UTF-8, does not parse, or names an audio path outside the dataset's audio
root (absolute, or climbing out with `..`) comes back as a reject with the list file and line
number, as do single utterances' problems (an empty transcript, a language field that disagrees).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Optional

from tasks.core import paths
from tasks.core.config import DatasetConfig, resolve_local
from tasks.core.storage import Storage, open_storage

if TYPE_CHECKING:
    from tasks.core.cache import FileHashes


class DatasetError(ValueError):
    """A dataset cannot be read at all; the message names the dataset and the file."""


@dataclass(frozen=True)
class SourceUtterance:
    utt_id: str  # "<dataset>/<stem>", unique across the corpus
    dataset: str
    audio: str  # key inside the dataset's storage
    source: str  # human-readable location, for reports
    speaker: str
    language: str
    text: str


@dataclass(frozen=True)
class Reject:
    source: str
    reason: str
    utt_id: str = ""
    stage: str = "ingest"

    def to_json(self) -> dict:
        return {"source": self.source, "reason": self.reason, "id": self.utt_id, "stage": self.stage}


def dataset_storage(ds: DatasetConfig, root: Path) -> Storage:
    if ds.path.startswith("s3://"):
        return open_storage(ds.path)
    path = resolve_local(root, ds.path)
    if not path.is_dir():
        raise DatasetError(f"dataset {ds.name!r}: path {path} does not exist or is not a folder")
    return open_storage(str(path))


def _stem(audio: str) -> str:
    """The utterance id part of an audio path: the path without its suffix, as pathlib has it."""
    a = audio.replace("\\", "/")
    if a and a != "." and not a.startswith(("/", "./")) and "//" not in a and "/./" not in a \
            and not a.endswith(("/", "/.")):  # already normal: string operations, 10x pathlib's speed
        head, _, name = a.rpartition("/")
        dot = name.rfind(".")
        stem = name[:dot] if 0 < dot < len(name) - 1 else name
        return f"{head}/{stem}" if head else stem
    return str(PurePosixPath(a).with_suffix("")).lstrip("/")


class BadLine(ValueError):
    """One list line that cannot be read; it becomes a reject, the rest of the list goes on."""


def _parse_bv2_list(ds: DatasetConfig, line: str):
    fields = line.split("|", 3)
    if len(fields) != 4:
        raise BadLine(f"expected `wav|speaker|language|text` (4 fields), got {len(fields)}: {line[:120]!r}")
    return fields[0].strip(), fields[1].strip(), fields[2].strip(), fields[3].strip()


def _parse_ljspeech(ds: DatasetConfig, line: str):
    fields = line.split("|")
    if len(fields) not in (2, 3) or not fields[0].strip():
        raise BadLine(f"expected `id|text[|normalized text]`, got {line[:120]!r}")
    return f"wavs/{fields[0].strip()}.wav", ds.speaker, None, fields[1].strip()


def _parse_jsonl(ds: DatasetConfig, line: str):
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise BadLine(f"not valid JSON: {err}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("audio"), str) or "text" not in obj:
        raise BadLine("expected an object with string `audio` and `text`")
    if ds.speaker is None and not isinstance(obj.get("speaker"), str):
        raise BadLine("no `speaker` and the dataset sets no fixed speaker")
    return obj["audio"], obj.get("speaker"), obj.get("language"), str(obj["text"] or "").strip()


# raw_audio: the `prepare` stage's metadata.jsonl (data/prepared/<name>/), read like any jsonl list
PARSERS = {"bv2_list": _parse_bv2_list, "ljspeech": _parse_ljspeech, "jsonl": _parse_jsonl, "raw_audio": _parse_jsonl}


def _inside(path: str, root: str) -> bool:
    import os

    return os.path.commonpath([os.path.normpath(path), root]) == root


def relative_audio(audio: str, root: Optional[str]) -> str:
    """A list's audio path as a key of the audio root's storage (absolute paths inside the root
    become relative to it)."""
    import os

    a = audio.replace("\\", "/")
    if root is not None and a.startswith("/"):
        return os.path.relpath(os.path.normpath(a), root).replace(os.sep, "/")
    return a


def list_lines(raw: bytes) -> list[tuple[int, str | None, str]]:
    """(line number, text or None, why not) for every non-blank line: a line that is not UTF-8 is
    (n, None, reason) and the others are still read."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    out = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            out.append((n, line.decode("utf-8"), ""))
        except UnicodeDecodeError as err:
            out.append((n, None, f"not UTF-8 text: byte 0x{line[err.start]:02x} at column {err.start + 1}"))
    return out


def audio_path_problem(audio: str, root: Optional[str] = None) -> Optional[str]:
    """Why a list's audio path may not be read: it is absolute (outside `root`, a local audio
    root, when one is given) or climbs out of the audio root."""
    a = audio.replace("\\", "/")
    if a.startswith("/") or (len(a) > 1 and a[1] == ":") or a.startswith("~"):
        if root is not None and a.startswith("/") and _inside(a, root):
            return None
        return (f"audio path {audio!r} is absolute and not inside the audio root {root}" if root else
                f"audio path {audio!r} is absolute: paths are relative to the dataset's audio root")
    depth = 0
    for part in a.split("/"):
        depth += -1 if part == ".." else (0 if part in ("", ".") else 1)
        if depth < 0:
            return f"audio path {audio!r} leaves the dataset's audio root"
    return None


def read_dataset(ds: DatasetConfig, root: Path) -> tuple[Storage, list[SourceUtterance], list[Reject]]:
    """Parse a dataset's list: (the storage its audio is read from, utterances to ingest,
    utterances rejected up front)."""
    if ds.format == "raw_audio":  # its list and clips are what the `prepare` stage made of the recordings
        folder = resolve_local(root, paths.PREPARED) / ds.name
        if not folder.is_dir():
            raise DatasetError(f"dataset {ds.name!r}: {folder} not found; run the prepare stage first")
        storage = open_storage(str(folder))
    else:
        storage = dataset_storage(ds, root)
    where = storage.describe(ds.list_name)
    audio_root = None
    if ds.audio_root is not None:
        folder = resolve_local(root, ds.audio_root)
        if not folder.is_dir():
            raise DatasetError(f"dataset {ds.name!r}: audio_root {folder} does not exist or is not a folder")
        audio_root = str(folder.resolve())
    try:
        raw = storage.read_bytes(ds.list_name)
    except FileNotFoundError:
        raise DatasetError(f"dataset {ds.name!r}: list file {where} not found") from None
    codes = {(ds.language_field or ds.language).upper()}
    utterances, rejects, seen = [], [], set()
    for n, line, why in list_lines(raw):
        # Relative to the dataset, not the machine, so the outs are identical in every clone.
        if line is None:
            rejects.append(Reject(f"{ds.name}:{ds.list_name}:{n}", why))
            continue
        try:
            audio, speaker, lang, text = PARSERS[ds.format](ds, line)
        except BadLine as err:
            rejects.append(Reject(f"{ds.name}:{ds.list_name}:{n}", str(err)))
            continue
        reason = audio_path_problem(audio, audio_root)
        if not reason:
            audio = relative_audio(audio, audio_root)  # no machine paths in the outs
        source = f"{ds.name}:{ds.list_name}:{n} ({audio})"
        utt_id = f"{ds.name}/{_stem(audio)}"
        speaker = ds.speaker or (speaker or "").strip()
        if reason:
            pass
        elif utt_id in seen:
            reason = f"duplicate utterance id {utt_id!r} in the list"
        elif not text:
            reason = "empty transcript"
        elif not speaker:
            reason = "empty speaker"
        elif lang is not None and lang.strip().upper() not in codes:
            reason = f"language field {lang!r} does not match dataset language {ds.language!r}"
        if reason:
            rejects.append(Reject(source, reason, utt_id))
            continue
        seen.add(utt_id)
        utterances.append(SourceUtterance(utt_id, ds.name, audio, source, speaker, ds.language, text))
    return (storage if audio_root is None else open_storage(audio_root)), utterances, rejects


def fingerprint_dataset(ds: DatasetConfig, root: Path, memo: Optional["FileHashes"] = None) -> dict:
    """Every file of a dataset with its size and a content fingerprint, sorted: `sha256` of a local
    file, the `etag` of an S3 object (from the listing: checking a bucket for new data downloads
    nothing).

    The `source` stages write this per dataset, so that `ingest` re-runs when a corpus outside
    DVC gains, loses or changes a file; `retrain` compares it with the recorded one. `memo`
    (cache.FileHashes) spares re-reading local files whose stat is unchanged."""
    from tasks.core.storage import S3Storage

    storage = dataset_storage(ds, root)
    if isinstance(storage, S3Storage):
        files = [{"path": k, "size": size, "etag": etag} for k, size, etag in sorted(storage.list_versions())]
    else:
        files = [{"path": key, "size": storage.size(key), "sha256": storage.content_id(key, memo)}
                 for key in storage.list()]
    return {"dataset": ds.name, "format": ds.format, "files": files}


def file_identity(entry: dict) -> str:
    """The content fingerprint of one `fingerprint_dataset` file entry (sha256 or S3 ETag)."""
    return entry.get("sha256") or f"etag:{entry['etag']}"


def reason_kind(reason: str) -> str:
    """A reject reason without its specifics, for counting ('too short: 0.2 s ...' -> 'too short')."""
    return reason.split(":")[0].split(" (")[0].split(" of ")[0]

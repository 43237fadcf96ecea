import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tasks.core.cache import ResultCache
from tasks.core.config import load_params
from tasks.core.shards import read_jsonl, read_pcm
from tasks.prep.datasets import DatasetError
from tasks.prep.ingest import assemble, assign_split, audio_settings, ingest_chunk, plan_ingest
from tests.helpers import aishell_bv2_list, ljspeech_subset, write_params


def wav_with_codec(tag: int, data: bytes) -> bytes:
    """A RIFF/WAVE file whose format chunk names codec `tag`."""
    fmt = struct.pack("<HHIIHH", tag, 1, 22050, 44100, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def run_ingest(params_path: Path, out: Path, cache_path: Path | None = None) -> dict:
    """The ingest stage without Prefect: plan, compute what the cache lacks, assemble."""
    params = load_params(params_path)
    plan = plan_ingest(params, params_path.parent)
    cache = ResultCache(cache_path or out.with_suffix(".sqlite"))
    missing = cache.missing(i.key for i in plan.items)
    cache.put_many(ingest_chunk(plan.storages, [i for i in plan.items if i.key in missing], audio_settings(params)))
    return assemble(plan, cache, out, params)


@pytest.fixture()
def corpus(tmp_path, real_speech):
    """Real LJSpeech and AISHELL-3 clips, re-encoded to every format, plus one of each bad input."""
    en = tmp_path / "en"
    ids = ljspeech_subset(real_speech, en, 6)
    wav = en / "wavs"
    x, sr = sf.read(wav / f"{ids[0]}.wav")  # 9.7 s
    sf.write(wav / "slice.flac", x[sr: sr * 4], sr)
    sf.write(wav / "slice.ogg", x[sr * 2: sr * 5], sr)
    sf.write(wav / "slice.mp3", x[sr * 3: sr * 6], sr)
    (wav / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    (wav / "empty.wav").write_bytes(b"")
    (wav / "notaudio.wav").write_text("this is a text file, not a RIFF wave\n")
    (wav / "clip.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A ")
    (wav / "codec.wav").write_bytes(wav_with_codec(0x1234, np.zeros(2000, "<i2").tobytes()))
    sf.write(wav / "short.wav", x[: int(sr * 0.1)], sr)
    sf.write(wav / "long.wav", np.tile(x, 3)[: sr * 20], sr)
    sf.write(wav / "stereo.wav", np.stack([x[: sr * 2], x[sr * 4: sr * 6]], axis=1), sr)
    shutil.copy(wav / f"{ids[0]}.wav", wav / "dupe.wav")
    sf.write(wav / "whole.wav", x[: sr * 3], sr, subtype="PCM_16")
    (wav / "truncated.wav").write_bytes((wav / "whole.wav").read_bytes()[: 44 + sr * 2])  # header says 3 s, holds 1
    rng = np.random.default_rng(0)
    sf.write(wav / "dither.wav", rng.uniform(-2, 2, sr * 2) / 32768, sr, subtype="PCM_16")  # faint noise, no speech
    bad = ["wavs/slice.flac|en_a|EN|a slice as flac.",
           "wavs/slice.ogg|en_b|EN|a slice as ogg.",
           "wavs/slice.mp3|en_c|EN|a slice as mp3.",
           "wavs/stereo.wav|en_a|EN|a stereo file mixed to mono.",
           "wavs/corrupt.wav|en_a|EN|corrupt.", "wavs/empty.wav|en_a|EN|empty.",
           "wavs/notaudio.wav|en_a|EN|not audio.", "wavs/missing.wav|en_a|EN|missing.",
           "wavs/clip.m4a|en_a|EN|unsupported.", "wavs/codec.wav|en_a|EN|unknown codec.", "wavs/short.wav|en_a|EN|too short.",
           "wavs/long.wav|en_a|EN|too long.", f"wavs/{ids[4]}.wav|en_a|EN|   ",
           "wavs/dupe.wav|en_a|EN|a duplicate.", "wavs/truncated.wav|en_a|EN|cut short.",
           "wavs/dither.wav|en_a|EN|only faint dither noise."]
    (en / "mixed.list").write_text("\n".join(bad) + "\n", encoding="utf-8")
    aishell_bv2_list(real_speech, tmp_path / "zh", 4)
    params = write_params(tmp_path, [
        {"name": "lj", "language": "en", "path": "en", "format": "ljspeech", "speaker": "lj"},
        {"name": "mixed", "language": "en", "path": "en", "format": "bv2_list", "list_file": "mixed.list"},
        {"name": "aishell", "language": "zh", "path": "zh", "format": "bv2_list"},
    ])
    return params


def test_ingest_rejects_each_bad_input_with_its_reason_and_keeps_every_good_clip(corpus, tmp_path):
    summary = run_ingest(corpus, tmp_path / "out")
    rows = list(read_jsonl(tmp_path / "out" / "index.jsonl"))
    rejects = {Path(r["id"]).name: r["reason"] for r in read_jsonl(tmp_path / "out" / "rejects.jsonl")}
    ids = {r["id"] for r in rows}
    assert {f"lj/wavs/LJ001-000{i}" for i in range(1, 7)} <= ids
    assert {"mixed/wavs/stereo"} <= ids and len([i for i in ids if i.startswith("aishell/")]) == 4
    speakers = {r["speaker"] for r in rows if r["id"] == "mixed/wavs/slice"}
    assert speakers == {"en_a"}  # the flac; ogg and mp3 share its stem, so their ids repeat:
    assert "duplicate utterance id 'mixed/wavs/slice'" in rejects["slice"]
    assert rejects["corrupt"].startswith("not a readable audio file")
    assert rejects["empty"] == "empty file (0 bytes)"
    assert rejects["notaudio"].startswith("not a readable audio file")
    assert rejects["missing"] == "missing audio file"
    assert rejects["clip"].startswith("unsupported format '.m4a'")
    assert rejects["codec"].startswith("unsupported encoding")
    assert rejects["short"].startswith("too short")
    assert rejects["long"].startswith("too long")
    assert rejects["LJ001-0005"] == "empty transcript"
    assert rejects["dupe"] == "exact duplicate of lj/wavs/LJ001-0001"
    assert rejects["truncated"] == f"truncated: the header says {3 * 22050} frames, the file holds {22050}"
    assert rejects["dither"].startswith("near-silent: the loudest 20 ms is at -") \
        and rejects["dither"].endswith("dBFS, below audio.silence_floor_dbfs -50")
    assert summary["utterances"] == len(rows) and summary["rejects"] == 14
    assert all(r["source"] for r in read_jsonl(tmp_path / "out" / "rejects.jsonl"))


def test_ingest_resamples_to_the_target_rate_and_stores_pcm_in_shards(corpus, tmp_path):
    run_ingest(corpus, tmp_path / "out")
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "index.jsonl")}
    zh = next(r for r in rows.values() if r["dataset"] == "aishell")
    pcm = read_pcm(tmp_path / "out", zh)
    assert zh["sample_rate"] == 22050 and len(pcm) == zh["num_samples"]
    assert abs(zh["duration"] - len(pcm) / 22050) < 1e-3
    assert pcm.dtype == np.int16 and np.abs(pcm).max() > 1000  # real speech, not silence
    shard_files = sorted(p.name for p in (tmp_path / "out").glob("audio-*.pcm"))
    assert shard_files == sorted({r["shard"] for r in rows.values()})
    assert len(shard_files) < len(rows)  # files grow with shards, not utterances


def test_ingest_outs_are_byte_identical_across_runs_and_the_split_is_seeded(corpus, tmp_path):
    run_ingest(corpus, tmp_path / "a")
    run_ingest(corpus, tmp_path / "b")
    shards = list(json.loads((tmp_path / "a" / "shards.json").read_text()))
    for name in ["index.jsonl", "rejects.jsonl", "summary.json", "shards.json", *shards]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    rows = list(read_jsonl(tmp_path / "a" / "index.jsonl"))
    val = [r for r in rows if r["split"] == "val"]
    assert {(r["language"], r["speaker"]) for r in val} == {("en", "lj"), ("en", "en_a")}
    assert all(r["split"] == "train" for r in rows if r["dataset"] == "aishell")  # one clip per speaker


def test_split_depends_only_on_seed_and_ids():
    rows = [{"id": f"d/u{i}", "language": "en", "speaker": "s"} for i in range(40)]
    assign_split(rows, seed=1, val_per_speaker=5, min_train=1)
    first = [r["id"] for r in rows if r["split"] == "val"]
    reversed_rows = [dict(r) for r in reversed(rows)]
    assign_split(reversed_rows, seed=1, val_per_speaker=5, min_train=1)
    assert sorted(first) == sorted(r["id"] for r in reversed_rows if r["split"] == "val")
    assign_split(rows, seed=2, val_per_speaker=5, min_train=1)
    assert sorted(first) != sorted(r["id"] for r in rows if r["split"] == "val")
    assert len(first) == 5


def test_a_missing_dataset_path_fails_before_any_work(tmp_path):
    params = write_params(tmp_path, [{"name": "x", "language": "en", "path": "nowhere",
                                      "format": "ljspeech", "speaker": "s"}])
    with pytest.raises(DatasetError, match="nowhere does not exist"):
        plan_ingest(load_params(params), tmp_path)


def _one_good_clip(folder: Path, real_speech: Path) -> None:
    shutil.copy(real_speech / "en_ljspeech" / "wavs" / "LJ001-0001.wav", folder / "good.wav")


def test_bad_list_lines_are_rejected_one_by_one_with_file_line_and_reason(tmp_path, real_speech):
    """A line that is not UTF-8, does not parse, or whose audio path leaves the dataset's folder is
    a reject naming the list and line; every other line is still ingested."""
    folder = tmp_path / "d"
    folder.mkdir()
    _one_good_clip(folder, real_speech)
    (tmp_path / "outside.wav").write_bytes((folder / "good.wav").read_bytes())
    lines = [b"good.wav|spk|EN|Printing, in the only sense.",
             b"a.wav|spk|EN|caf\xe9 in Latin-1",  # not UTF-8
             b"broken line without fields",
             b"../outside.wav|spk|EN|climbs out",
             b"/etc/passwd|spk|EN|absolute",
             b"sub/../../outside.wav|spk|EN|climbs out later"]
    (folder / "filelist.list").write_bytes(b"\n".join(lines) + b"\n")
    params = write_params(tmp_path, [{"name": "x", "language": "en", "path": "d", "format": "bv2_list"}])
    plan = plan_ingest(load_params(params), tmp_path)
    assert [i.utt.utt_id for i in plan.items] == ["x/good"]
    reasons = {r.source.split(" ")[0]: r.reason for r in plan.rejects}
    assert reasons["x:filelist.list:2"] == "not UTF-8 text: byte 0xe9 at column 17"
    assert reasons["x:filelist.list:3"].startswith("expected `wav|speaker|language|text` (4 fields), got 1")
    assert reasons["x:filelist.list:4"] == "audio path '../outside.wav' leaves the dataset's audio root"
    assert reasons["x:filelist.list:5"].startswith("audio path '/etc/passwd' is absolute")
    assert reasons["x:filelist.list:6"] == "audio path 'sub/../../outside.wav' leaves the dataset's audio root"


def test_a_jsonl_line_that_is_not_json_is_a_reject_with_file_and_line(tmp_path, real_speech):
    folder = tmp_path / "d"
    folder.mkdir()
    _one_good_clip(folder, real_speech)
    (folder / "metadata.jsonl").write_text(json.dumps({"audio": "good.wav", "text": "t", "speaker": "s"})
                                           + "\n{not json\n")
    params = write_params(tmp_path, [{"name": "x", "language": "en", "path": "d", "format": "jsonl"}])
    plan = plan_ingest(load_params(params), tmp_path)
    assert len(plan.items) == 1
    [reject] = plan.rejects
    assert reject.source == "x:metadata.jsonl:2" and reject.reason.startswith("not valid JSON")


def test_a_language_field_that_disagrees_with_the_dataset_is_a_reject(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "filelist.list").write_text("a.wav|spk|JP|text\nb.wav|spk|EN|text\n")
    params = write_params(tmp_path, [{"name": "x", "language": "en", "path": "d", "format": "bv2_list"}])
    plan = plan_ingest(load_params(params), tmp_path)
    assert plan.items == [] and len(plan.rejects) == 2  # x/b's audio is missing too
    assert "missing audio file" == plan.rejects[1].reason
    assert "language field 'JP' does not match" in plan.rejects[0].reason


def test_source_hashes_are_remembered_by_stat_and_a_changed_file_is_hashed_again(tmp_path, real_speech):
    import os

    from tasks.core.cache import FileHashes
    from tasks.core.storage import file_sha256

    ljspeech_subset(real_speech, tmp_path / "en", 3)
    params_path = write_params(tmp_path, [{"name": "lj", "language": "en", "path": "en", "format": "ljspeech",
                                           "speaker": "lj"}])
    params = load_params(params_path)
    first = {i.utt.utt_id: i.key for i in plan_ingest(params, tmp_path).items}
    memo = FileHashes.in_dir(tmp_path / params.runtime.cache_dir)
    wav = sorted((tmp_path / "en" / "wavs").iterdir())[0]
    assert memo.sha256(wav) == file_sha256(wav)  # the plan recorded it
    x, sr = sf.read(wav)
    sf.write(wav, x * 0.5, sr)
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))  # even within one mtime tick
    second = {i.utt.utt_id: i.key for i in plan_ingest(params, tmp_path).items}
    assert [u for u in first if first[u] != second[u]] == [f"lj/wavs/{wav.stem}"]


def test_utterance_ids_are_the_audio_paths_without_suffix_as_pathlib_has_them():
    import itertools
    from pathlib import PurePosixPath

    from tasks.prep.datasets import _stem

    def pathlib_stem(audio):
        try:
            return str(PurePosixPath(audio.replace("\\", "/")).with_suffix("")).lstrip("/")
        except ValueError as err:
            return f"error: {err}"

    def stem(audio):
        try:
            return _stem(audio)
        except ValueError as err:
            return f"error: {err}"

    parts = ["a", ".", "/", "\\", "x.wav", "..", "é"]
    for n in range(1, 5):
        for combo in itertools.product(parts, repeat=n):
            audio = "".join(combo)
            assert stem(audio) == pathlib_stem(audio), audio
    assert _stem("wavs/LJ001-0001.wav") == "wavs/LJ001-0001" and _stem("a.b/c.tar.gz") == "a.b/c.tar"


def test_an_upstream_bert_vits2_list_imports_unchanged_with_audio_root(tmp_path, real_speech):
    """Upstream's `Data/<name>/esd.list` holds paths relative to its checkout (or absolute ones):
    `audio_root` names that checkout, and every path must stay inside it."""
    upstream = tmp_path / "Bert-VITS2"
    wavs = upstream / "Data" / "esd" / "wavs"
    wavs.mkdir(parents=True)
    for name in ("a", "b"):
        shutil.copy(real_speech / "en_ljspeech" / "wavs" / "LJ001-0001.wav", wavs / f"{name}.wav")
    (tmp_path / "elsewhere.wav").write_bytes((wavs / "a.wav").read_bytes())
    (upstream / "Data" / "esd" / "esd.list").write_text(
        f"Data/esd/wavs/a.wav|spk|EN|Relative to upstream's checkout.\n"
        f"{wavs / 'b.wav'}|spk|EN|Absolute, inside the checkout.\n"
        f"{tmp_path / 'elsewhere.wav'}|spk|EN|Absolute, outside it.\n", encoding="utf-8")
    params = write_params(tmp_path, [{"name": "esd", "language": "en", "path": "Bert-VITS2/Data/esd",
                                      "format": "bv2_list", "list_file": "esd.list", "audio_root": "Bert-VITS2"}])
    plan = plan_ingest(load_params(params), tmp_path)
    assert [i.utt.utt_id for i in plan.items] == ["esd/Data/esd/wavs/a", "esd/Data/esd/wavs/b"]
    assert all(str(tmp_path) not in i.utt.source for i in plan.items)  # outs name no machine paths
    [reject] = plan.rejects
    assert reject.source.startswith("esd:esd.list:3") and "is absolute and not inside the audio root" in reject.reason
    summary = run_ingest(params, tmp_path / "out")  # and the audio is read from the checkout
    assert summary["utterances"] == 1 and summary["rejects"] == 2  # b duplicates a: an exact duplicate

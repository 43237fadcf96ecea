"""The reproducible demo corpus: a small multilingual speech corpus spoken by espeak-ng.

Each language is written in a different source layout and audio format so that ingest's
readers and decoders all get exercised:

    en_m1/, en_f1/  LJSpeech (no speaker column: one folder per voice)
                    metadata.csv (id|text|normalized text), wavs/<id>.wav
    zh/  bv2 list   filelist.list (wav_path|speaker|ZH|text), wavs/<id>.flac
    ja/  JSONL      metadata.jsonl ({"audio", "text", "speaker"}), audio/<id>.ogg (Vorbis)
    de/  bv2 list   filelist.list (wav_path|speaker|DE|text), wavs/<id>.mp3

Two espeak-ng voices per language take turns sentence by sentence. Transcripts are the raw
sentences; only what espeak-ng is fed is converted (kana for Japanese, tone-numbered pinyin for
Mandarin), because espeak-ng cannot read kanji or hanzi. The same sentences always give
byte-identical files.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import unicodedata
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

ESPEAK = "espeak-ng"
SAMPLE_RATE = 22050  # what espeak-ng synthesises; checked on every clip


@dataclass(frozen=True)
class Voice:
    speaker: str
    espeak_voice: str  # voice name, with a +variant
    pitch: int  # espeak-ng -p, 0..99
    speed: int  # espeak-ng -s, words per minute


@dataclass(frozen=True)
class Layout:
    layout: str  # "ljspeech" | "bv2_list" | "jsonl"
    audio_dir: str
    ext: str
    sf_format: str
    sf_subtype: str
    voices: tuple[Voice, ...]


LAYOUTS: dict[str, Layout] = {
    "en": Layout("ljspeech", "wavs", "wav", "WAV", "PCM_16",
                 (Voice("en_m1", "en-us", 45, 165), Voice("en_f1", "en-us+f3", 65, 175))),
    "zh": Layout("bv2_list", "wavs", "flac", "FLAC", "PCM_16",
                 (Voice("zh_m1", "cmn-latn-pinyin", 45, 160), Voice("zh_f1", "cmn-latn-pinyin+f2", 70, 170))),
    "ja": Layout("jsonl", "audio", "ogg", "OGG", "VORBIS",
                 (Voice("ja_m1", "ja", 40, 165), Voice("ja_f1", "ja+f4", 70, 175))),
    "de": Layout("bv2_list", "wavs", "mp3", "MP3", "MPEG_LAYER_III",
                 (Voice("de_m1", "de", 45, 160), Voice("de_f1", "de+f2", 65, 170))),
}


@dataclass(frozen=True)
class Utterance:
    language: str
    utt_id: str
    voice: Voice
    text: str  # the transcript: the raw sentence
    spoken: str  # what espeak-ng reads


# ---------------------------------------------------------------- what espeak-ng is fed

def _to_kana(text: str) -> str:
    # espeak-ng's ja voice reads kana only (kanji come out as "Chinese letter").
    import pyopenjtalk

    return pyopenjtalk.g2p(text, kana=True)


def _to_pinyin(text: str) -> str:
    # `cmn` reads tone digits as English; cmn-latn-pinyin reads TONE3 pinyin. Digits are
    # spelled in hanzi first so that they are read in Mandarin, not letter by letter.
    import cn2an
    from pypinyin import Style, lazy_pinyin

    syllables = lazy_pinyin(cn2an.transform(text, "an2cn"), style=Style.TONE3, neutral_tone_with_five=True)
    spoken = unicodedata.normalize("NFKC", " ".join(syllables))
    return spoken.translate(str.maketrans({"。": ".", "、": ",", "“": "", "”": "", "「": "", "」": ""}))


SPOKEN: dict[str, Callable[[str], str]] = {"ja": _to_kana, "zh": _to_pinyin}


# ---------------------------------------------------------------- synthesis and encoding

def synthesize(text: str, voice: Voice) -> np.ndarray:
    """16-bit mono samples at SAMPLE_RATE from one espeak-ng process."""
    cmd = [ESPEAK, "-v", voice.espeak_voice, "-p", str(voice.pitch), "-s", str(voice.speed), "--stdin", "--stdout"]
    try:
        proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=120)
    except FileNotFoundError as e:
        raise RuntimeError(f"espeak-ng (voice {voice.espeak_voice!r}) is not installed: {e}") from e
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for voice {voice.espeak_voice!r} (exit {proc.returncode}): "
                           f"{proc.stderr.decode('utf-8', 'replace').strip()}")
    samples, rate = sf.read(io.BytesIO(proc.stdout), dtype="int16")
    if rate != SAMPLE_RATE:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz audio, expected {SAMPLE_RATE}")
    return samples


def encode(samples: np.ndarray, layout: Layout, utt_id: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, format=layout.sf_format, subtype=layout.sf_subtype)
    data = buf.getvalue()
    if layout.sf_format == "OGG":
        # libsndfile seeds the Ogg stream serial number from the clock: pin it.
        data = pin_ogg_serial(data, zlib.crc32(utt_id.encode("utf-8")))
    return data


def pin_ogg_serial(data: bytes, serial: int) -> bytes:
    """Rewrite every Ogg page's stream serial number and recompute its CRC."""
    out, pos = bytearray(), 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_segments = data[pos + 26]
        body = sum(data[pos + 27:pos + 27 + n_segments])
        page = bytearray(data[pos:pos + 27 + n_segments + body])
        page[14:18] = serial.to_bytes(4, "little")
        page[22:26] = bytes(4)
        page[22:26] = _ogg_crc(page).to_bytes(4, "little")
        out += page
        pos += len(page)
    return bytes(out)


def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC_TABLE = _ogg_crc_table()


def _ogg_crc(page: bytes) -> int:
    # Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, initial value 0, no final xor.
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC_TABLE[(crc >> 24) ^ byte]
    return crc


# ---------------------------------------------------------------- the corpus

def read_sentences(path: Path) -> list[str]:
    sentences = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for s in sentences:
        if "|" in s:  # the LJSpeech and bv2 list formats are pipe-separated
            raise ValueError(f"{path}: sentence contains '|': {s!r}")
    return sentences


def plan(language: str, sentences: list[str]) -> list[Utterance]:
    """One utterance per sentence, the language's voices taking turns."""
    voices = LAYOUTS[language].voices
    to_spoken = SPOKEN.get(language, lambda s: s)
    utterances = []
    for i, text in enumerate(sentences):
        voice = voices[i % len(voices)]
        utterances.append(Utterance(language, f"{voice.speaker}_{i + 1:04d}", voice, text, to_spoken(text)))
    return utterances


def audio_path(utt: Utterance) -> str:
    layout = LAYOUTS[utt.language]
    return f"{layout.audio_dir}/{utt.utt_id}.{layout.ext}"


def metadata(language: str, utterances: list[Utterance]) -> tuple[str, str]:
    """(file name, content) of the language's transcript file."""
    layout = LAYOUTS[language]
    if layout.layout == "ljspeech":  # no number expansion here: both text columns are raw
        return "metadata.csv", "".join(f"{u.utt_id}|{u.text}|{u.text}\n" for u in utterances)
    if layout.layout == "bv2_list":
        return "filelist.list", "".join(
            f"{audio_path(u)}|{u.voice.speaker}|{language.upper()}|{u.text}\n" for u in utterances)
    return "metadata.jsonl", "".join(
        json.dumps({"audio": audio_path(u), "text": u.text, "speaker": u.voice.speaker}, ensure_ascii=False) + "\n"
        for u in utterances)


def dataset_folders(language: str, utterances: list[Utterance]) -> dict[str, list[Utterance]]:
    """Folder name -> its utterances: one per language, or one per voice where the format has no
    speaker column (LJSpeech), so that each folder is a dataset with a fixed speaker."""
    if LAYOUTS[language].layout != "ljspeech":
        return {language: utterances}
    folders: dict[str, list[Utterance]] = {}
    for utt in utterances:
        folders.setdefault(utt.voice.speaker, []).append(utt)
    return folders


def _render(utt: Utterance, root: Path) -> int:
    """Synthesise, encode and write one clip under `root`; returns its length in samples."""
    samples = synthesize(utt.spoken, utt.voice)
    path = root / audio_path(utt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(samples, LAYOUTS[utt.language], utt.utt_id))
    return len(samples)


def _swap_in(built: Path, dest: Path) -> None:
    """Replace `dest` with the finished `built` folder, so no stale or half-written file remains."""
    if not dest.exists():
        os.replace(built, dest)
        return
    old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
    os.replace(dest, old / dest.name)
    os.replace(built, dest)
    shutil.rmtree(old)


def make_demo_corpus(sentences_dir: Path, out_dir: Path, jobs: int | None = None) -> dict:
    """Write one dataset folder per language `<sentences_dir>/<lang>.txt` found; returns a summary.

    Clips are synthesised by one espeak-ng process each, `jobs` of them at a time (one per CPU
    by default): a process costs ~30 ms, mostly start-up, which a thread pool overlaps.
    """
    sentences_dir, out_dir = Path(sentences_dir), Path(out_dir)
    languages = [lang for lang in LAYOUTS if (sentences_dir / f"{lang}.txt").is_file()]
    if not languages:
        raise FileNotFoundError(f"no sentence lists ({', '.join(f'{l}.txt' for l in LAYOUTS)}) in {sentences_dir}")
    plans = {lang: plan(lang, read_sentences(sentences_dir / f"{lang}.txt")) for lang in languages}

    out_dir.mkdir(parents=True, exist_ok=True)
    folders = {name: utts for lang in languages for name, utts in dataset_folders(lang, plans[lang]).items()}
    staging = {name: Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}.partial-")) for name in folders}
    try:
        work = [(utt, staging[name]) for name, utts in folders.items() for utt in utts]
        with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
            lengths = list(pool.map(lambda job: _render(*job), work))
        for name, utts in folders.items():
            file_name, content = metadata(utts[0].language, utts)
            (staging[name] / file_name).write_text(content, encoding="utf-8")
            _swap_in(staging[name], out_dir / name)
    finally:
        for path in staging.values():
            shutil.rmtree(path, ignore_errors=True)
    return summarize(plans, [utt for utts in folders.values() for utt in utts], lengths)


def summarize(plans: dict[str, list[Utterance]], utterances: list[Utterance], lengths: list[int]) -> dict:
    summary: dict = {"languages": {}, "utterances": len(utterances),
                     "seconds": round(sum(lengths) / SAMPLE_RATE, 2)}
    for lang in plans:
        summary["languages"][lang] = {"format": LAYOUTS[lang].layout, "audio": LAYOUTS[lang].ext,
                                      "utterances": 0, "seconds": 0.0, "speakers": {}}
    for utt, n in zip(utterances, lengths):
        entry = summary["languages"][utt.language]
        entry["utterances"] += 1
        entry["seconds"] += n / SAMPLE_RATE
        entry["speakers"][utt.voice.speaker] = entry["speakers"].get(utt.voice.speaker, 0) + 1
    for entry in summary["languages"].values():
        entry["seconds"] = round(entry["seconds"], 2)
    return summary

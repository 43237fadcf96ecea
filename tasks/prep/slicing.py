"""Long recordings cut into clips at pauses, with Silero VAD (the `silero-vad` wheel's JIT model).

    clips, dropped = slice_recording(wav, sr, SliceParams())   # [(start, end)] in samples
    manifest = slice_files(inputs, out_dir, cfg)       # clips as WAV + manifest.jsonl

1. Speech regions: Silero VAD at 16 kHz (threshold `vad_threshold`), regions joined across gaps
   shorter than 100 ms, so the gaps left are the recording's pauses.
2. Cut at every pause of at least `min_silence` seconds.
3. A piece longer than `max_seconds` is split at its longest shorter pause that leaves both parts
   at least `min_seconds` long (and the first at most `max_seconds`); where it has none, at the
   quietest 20 ms frame inside that window (the RMS minimum: a breath or a closure, not the middle
   of a vowel), and so on for the rest.
4. A piece shorter than `min_seconds` joins its neighbour across the shorter pause when the union
   stays within `max_seconds`; otherwise it is dropped (listed in the manifest's `dropped`).
5. Each clip is padded by `padding` seconds of the recording on both sides, never past the middle
   of the pause to its neighbour.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from tasks.core.config import SliceParams

VAD_RATE = 16000
FRAME_S = 0.020  # the frame of the quietest-point search


@lru_cache(maxsize=1)
def _vad():
    from silero_vad import load_silero_vad

    return load_silero_vad()  # the JIT model inside the wheel; no network


def speech_regions(wav: np.ndarray, sr: int, threshold: float = 0.5) -> list[tuple[int, int]]:
    """[(start, end)] of speech in samples at `sr` (gaps under 100 ms bridged)."""
    import torch
    from silero_vad import get_speech_timestamps

    from tasks.prep.audio import resample

    x = resample(np.asarray(wav, np.float32), sr, VAD_RATE)
    with torch.inference_mode():
        stamps = get_speech_timestamps(torch.from_numpy(x), _vad(), threshold=threshold, sampling_rate=VAD_RATE,
                                       min_speech_duration_ms=100, min_silence_duration_ms=100, speech_pad_ms=0)
    scale = sr / VAD_RATE
    return [(int(round(t["start"] * scale)), min(len(wav), int(round(t["end"] * scale)))) for t in stamps]


def _quietest(wav: np.ndarray, lo: int, hi: int, sr: int) -> int:
    """The centre of the 20 ms frame with the lowest RMS in [lo, hi)."""
    frame = max(1, int(FRAME_S * sr))
    n = (hi - lo) // frame
    if n < 1:
        return (lo + hi) // 2
    energy = (np.asarray(wav[lo:lo + n * frame], np.float64) ** 2).reshape(n, frame).mean(axis=1)
    return lo + int(np.argmin(energy)) * frame + frame // 2


def _split_long(piece: list[tuple[int, int]], wav: np.ndarray, sr: int, cfg: SliceParams) -> list[list[tuple[int, int]]]:
    """Split a piece (its speech regions) until each is at most max_seconds long (step 3)."""
    lo_len, hi_len = int(cfg.min_seconds * sr), int(cfg.max_seconds * sr)
    out, rest = [], list(piece)
    while rest and rest[-1][1] - rest[0][0] > hi_len:
        start = rest[0][0]
        gaps = [(rest[i + 1][0] - rest[i][1], i) for i in range(len(rest) - 1)
                if rest[i][1] - start >= lo_len and rest[i][1] - start <= hi_len and rest[-1][1] - rest[i + 1][0] >= lo_len]
        if gaps:
            _, i = max(gaps)
            out.append(rest[:i + 1])
            rest = rest[i + 1:]
            continue
        # no usable pause: cut one region at its quietest point inside the window
        cut = _quietest(wav, start + lo_len, min(start + hi_len, rest[-1][1] - lo_len), sr)
        head = [(s, min(e, cut)) for s, e in rest if s < cut]
        tail = [(max(s, cut), e) for s, e in rest if e > cut]
        out.append(head)
        rest = tail
    if rest:
        out.append(rest)
    return out


def slice_recording(wav: np.ndarray, sr: int, cfg: SliceParams = SliceParams(),
                    regions: list[tuple[int, int]] | None = None) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(clips, dropped): [(start, end)] in samples, padded; `dropped` the too-short speech pieces."""
    regions = speech_regions(wav, sr, cfg.vad_threshold) if regions is None else regions
    if not regions:
        return [], []
    min_gap = int(cfg.min_silence * sr)
    pieces, cur = [], [regions[0]]
    for r in regions[1:]:  # step 2
        if r[0] - cur[-1][1] >= min_gap:
            pieces.append(cur)
            cur = [r]
        else:
            cur.append(r)
    pieces.append(cur)
    pieces = [p for piece in pieces for p in _split_long(piece, wav, sr, cfg)]  # step 3
    spans = [(p[0][0], p[-1][1]) for p in pieces]
    lo_len, hi_len = int(cfg.min_seconds * sr), int(cfg.max_seconds * sr)
    merged, dropped = [], []
    i = 0
    while i < len(spans):  # step 4
        s, e = spans[i]
        if e - s >= lo_len:
            merged.append((s, e))
            i += 1
            continue
        left_gap = s - merged[-1][1] if merged else None
        right_gap = spans[i + 1][0] - e if i + 1 < len(spans) else None
        options = []
        if left_gap is not None and e - merged[-1][0] <= hi_len:
            options.append((left_gap, "left"))
        if right_gap is not None and spans[i + 1][1] - s <= hi_len:
            options.append((right_gap, "right"))
        if not options:
            dropped.append((s, e))
            i += 1
        elif min(options)[1] == "left":
            merged[-1] = (merged[-1][0], e)
            i += 1
        else:
            spans[i + 1] = (s, spans[i + 1][1])
            i += 1
    pad = int(cfg.padding * sr)
    clips = []
    for k, (s, e) in enumerate(merged):  # step 5
        left = (merged[k - 1][1] + s) // 2 if k else 0
        right = (e + merged[k + 1][0]) // 2 if k + 1 < len(merged) else len(wav)
        clips.append((max(left, s - pad), min(right, e + pad)))
    return clips, dropped


def slice_files(inputs: Iterable[Path], out_dir: Path, cfg: SliceParams = SliceParams()) -> dict:
    """Slice each recording into out_dir/<recording stem>_<nnnn>.wav (its sample rate, mono) and
    write out_dir/manifest.jsonl (one line per clip: clip, source, start, end in seconds). Returns
    {"clips", "dropped", "seconds_in", "seconds_out"}. Writes are atomic."""
    from tasks.core.storage import atomic_write_bytes
    from tasks.prep.audio import AudioError, decode, wav_bytes

    out_dir = Path(out_dir)
    rows, dropped, seconds_in = [], [], 0.0
    for src in inputs:
        src = Path(src)
        try:
            wav, sr = decode(src.read_bytes(), src.name)
        except (OSError, AudioError) as err:
            raise ValueError(f"{src}: {err}") from err
        seconds_in += len(wav) / sr
        clips, gone = slice_recording(wav, sr, cfg)
        stem = src.stem
        for k, (s, e) in enumerate(clips):
            name = f"{stem}_{k:04d}.wav"
            atomic_write_bytes(out_dir / name, wav_bytes(wav[s:e], sr))
            rows.append({"clip": name, "source": str(src), "start": round(s / sr, 3), "end": round(e / sr, 3),
                         "sha256": hashlib.sha256(np.ascontiguousarray(wav[s:e]).tobytes()).hexdigest()[:16]})
        dropped += [{"source": str(src), "start": round(s / sr, 3), "end": round(e / sr, 3),
                     "reason": f"speech shorter than min_seconds {cfg.min_seconds} with no neighbour to join"}
                    for s, e in gone]
    manifest = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(out_dir / "manifest.jsonl", manifest.encode("utf-8"))
    return {"clips": rows, "dropped": dropped, "seconds_in": seconds_in,
            "seconds_out": sum(r["end"] - r["start"] for r in rows), "config": cfg.model_dump()}


__all__ = ["slice_files", "slice_recording", "speech_regions"]

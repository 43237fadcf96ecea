"""Audio decoding and conditioning for ingest: decode, mono, resample, trim, loudness, int16."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np

SUPPORTED_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3"}


# WAV codecs libsndfile decodes: PCM, MS/IMA ADPCM, float, A-law, mu-law, GSM 6.10, MPEG, extensible.
LIBSNDFILE_WAV_TAGS = {0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0x0031, 0x0050, 0x0055, 0xFFFE}


def wav_format_tag(data: bytes) -> int | None:
    """The codec tag of a RIFF/WAVE file's `fmt ` chunk, or None if there is no readable one."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        if data[pos:pos + 4] == b"fmt ":
            plausible = 16 <= size <= 64 and pos + 8 + size <= len(data)  # else it is corruption
            return int.from_bytes(data[pos + 8:pos + 10], "little") if plausible else None
        pos += 8 + size + (size & 1)
    return None


def wav_data_frames(data: bytes) -> tuple[int, int] | None:
    """(frames the `data` chunk's header declares, frames its bytes hold) of a PCM RIFF/WAVE file;
    None for other files (libsndfile reads a cut WAV as if whole, silently)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, block = 12, None
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if kind == b"fmt " and pos + 22 <= len(data):
            channels = int.from_bytes(data[pos + 10:pos + 12], "little")
            bits = int.from_bytes(data[pos + 22:pos + 24], "little")
            block = channels * max(bits, 8) // 8
        elif kind == b"data":
            if not block or size == 0xFFFFFFFF:  # no fmt yet, or a streamed WAV of unknown length
                return None
            return size // block, max(0, len(data) - pos - 8) // block
        pos += 8 + size + (size & 1)
    return None


class AudioError(ValueError):
    """This clip cannot be used; the message is the reason written to the rejects report."""


def decode(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Bytes of a wav/flac/ogg/mp3 file -> (mono float32 samples, sample rate)."""
    import soundfile as sf

    ext = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
    if ext not in SUPPORTED_EXTENSIONS:
        raise AudioError(f"unsupported format {ext or '(no extension)'!r}; expected one of "
                         f"{sorted(SUPPORTED_EXTENSIONS)}")
    if not data:
        raise AudioError("empty file (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            declared, sr = f.frames, f.samplerate
            samples = f.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        text = err.error_string  # str(err) names the BytesIO's address: not reproducible
        tag = wav_format_tag(data)
        if tag is not None and tag not in LIBSNDFILE_WAV_TAGS:
            raise AudioError(f"unsupported encoding: WAV format tag 0x{tag:04x} ({text})") from None
        raise AudioError(f"not a readable audio file (corrupt or not {ext[1:]}): {text}") from None
    except (RuntimeError, ValueError) as err:
        raise AudioError(f"not a readable audio file: {err}") from None
    if samples.shape[0] == 0:
        raise AudioError("audio stream has no samples")
    held = wav_data_frames(data)
    if held is not None and held[0] > held[1]:
        raise AudioError(f"truncated: the header says {held[0]} frames, the file holds {held[1]}")
    if samples.shape[0] < declared:
        raise AudioError(f"truncated: the header says {declared} frames, {samples.shape[0]} decode")
    if not np.isfinite(samples).all():
        raise AudioError("audio contains NaN or infinite samples")
    return samples.mean(axis=1), int(sr)  # downmix: the mean keeps the level of a centred voice


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x
    import soxr

    return soxr.resample(x, sr_in, sr_out, quality="VHQ").astype(np.float32)


def trim_silence(x: np.ndarray, sr: int, top_db: float, frame_ms: float = 20.0) -> np.ndarray:
    """Cut leading and trailing frames whose RMS is more than `top_db` below the loudest frame."""
    frame = max(1, int(sr * frame_ms / 1000))
    n = len(x) // frame
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-20)
    db = 20 * np.log10(rms / rms.max())
    loud = np.flatnonzero(db > -top_db)
    start, end = loud[0] * frame, min(len(x), (loud[-1] + 1) * frame)
    return x[start:end]


def loudest_frame_dbfs(x: np.ndarray, sr: int, frame_ms: float = 20.0) -> float:
    """RMS level of the loudest `frame_ms` frame, in dB relative to full scale."""
    frame = max(1, int(sr * frame_ms / 1000))
    n = max(1, len(x) // frame)
    frames = x[: n * frame].reshape(n, -1) if len(x) >= frame else x.reshape(1, -1)
    return float(20 * np.log10(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)).max() + 1e-12))


def normalize_loudness(x: np.ndarray, sr: int, target_lufs: float) -> np.ndarray:
    import pyloudnorm

    meter = pyloudnorm.Meter(sr)
    if len(x) < int(meter.block_size * sr):  # BS.1770 needs one 400 ms block; leave short clips alone
        return x
    loudness = meter.integrated_loudness(x.astype(np.float64))
    if not np.isfinite(loudness):
        return x
    return (x * 10 ** ((target_lufs - loudness) / 20)).astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak > 0.999:  # scale down rather than clip after loudness gain
        x = x * (0.999 / peak)
    return np.round(x * 32767).astype("<i2")


@dataclass(frozen=True)
class AudioSettings:
    sample_rate: int
    loudness_lufs: Optional[float]
    trim_db: Optional[float]
    min_seconds: float
    max_seconds: float
    silence_floor_dbfs: Optional[float] = None


def condition(data: bytes, name: str, s: AudioSettings) -> np.ndarray:
    """Source file bytes -> int16 mono PCM at `s.sample_rate`, or AudioError with the reason."""
    x, sr = decode(data, name)
    if float(np.abs(x).max()) == 0.0:
        raise AudioError("silent clip (every sample is zero)")
    if s.silence_floor_dbfs is not None:
        loudest = loudest_frame_dbfs(x, sr)
        if loudest < s.silence_floor_dbfs:
            raise AudioError(f"near-silent: the loudest 20 ms is at {loudest:.1f} dBFS, below "
                             f"audio.silence_floor_dbfs {s.silence_floor_dbfs:g}")
    x = resample(x, sr, s.sample_rate)
    if s.trim_db is not None:
        x = trim_silence(x, s.sample_rate, s.trim_db)
    seconds = len(x) / s.sample_rate
    if seconds < s.min_seconds:
        raise AudioError(f"too short: {seconds:.3f} s < min_seconds {s.min_seconds}")
    if seconds > s.max_seconds:
        raise AudioError(f"too long: {seconds:.3f} s > max_seconds {s.max_seconds}")
    if s.loudness_lufs is not None:
        x = normalize_loudness(x, s.sample_rate, s.loudness_lufs)
    return to_int16(x)


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV file bytes (clipped to [-1, 1])."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()

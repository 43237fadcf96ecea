"""HiFi-VC inference: any-to-any voice conversion (a source recording re-spoken in the voice of a
reference recording, neither speaker needing to be in the training set), and its export.

    converter = load_converter("train/vc.json")                       # the vc stage's run record
    converter = load_converter("file://storage/runs/vc-<id>[/step_N]")  # a bundle or a run (latest)
    converter = load_converter("export")                              # an export folder with hifivc.json
    wav_24k, report = converter.convert(src, src_sr, ref, ref_sr)     # float32 at 24 kHz

What the input may be, and what happens to it (bad input is a ConvertError naming the file):
- any rate from MIN_RATE (8 kHz) up: the source is resampled to 16 kHz (the content encoder's
  rate; below 16 kHz the report notes that nothing above the Nyquist of the file reaches it), the
  reference to 24 kHz; a stereo file is averaged to mono when decoded (tasks/prep/audio.decode);
- the reference needs MIN_REFERENCE_VOICE (1 s) of speech (`speech_frames`: 10 ms frames within
  40 dB of its loudest and above -50 dBFS); longer than MAX_REFERENCE_SECONDS (30 s), the window
  of that length with the most speech is used (the speaker encoder averages over time: more adds memory, not identity);
- the source needs MIN_SOURCE_SECONDS and at least one voiced frame, and at most
  MAX_SOURCE_SECONDS (60 s: the Conformer attends over all of it; convert longer ones in pieces).
Pitch: the model's F0 encoder (params vc.model.f0_norm) says what `pitch` can do. "utterance"
(the default): the source's log-F0 normalised per utterance, the level and range from the
reference's embedding; `match` is that, and `follow` (keep the source's own level) is an error.
"none": the model follows the lf0 it is given: `follow` passes the source's, `match` shifts its
voiced frames to the reference's mean log-F0.

`export_hifivc(converter, folder)` writes the seminar's TorchScript model, `hifivc.ts`:
`m = torch.jit.load(path); wav_24k = m(wav_src_16k [1, T], mel_ref_24k [1, 80, T_ref], lf0 [1, F])`
-> [1, N] and `m.preprocess(wav_src_16k, wav_ref_24k) -> (mel_ref_24k, lf0)`, beside the weights
(`hifivc.safetensors`, weight norm removed) and `hifivc.json` (the config, the files' sha256, the
eager-vs-TorchScript parity measured at export).
"""
from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from model.hifivc import CONTENT_HOP, CONTENT_RATE, OUTPUT_RATE, SPEAKER_MEL, HiFiVC, yin_lf0
from tasks.core.storage import atomic_write_bytes, file_sha256

PathLike = Union[str, os.PathLike]
NET = "HiFiVC"  # the vc trainer's net name in its bundles (tasks/training/vc.py)
MIN_RATE = 8000
MIN_SOURCE_SECONDS = 0.25
MAX_SOURCE_SECONDS = 60.0  # the Conformer attends over the whole source: memory grows with its square
MIN_REFERENCE_VOICE = 1.0
MAX_REFERENCE_SECONDS = 30.0
PITCH_MODES = ("match", "follow")
EXPORT_CONFIG, EXPORT_WEIGHTS, EXPORT_TS = "hifivc.json", "hifivc.safetensors", "hifivc.ts"
EXPORT_FORMAT = "vitsflow-hifivc"
# Measured with torch 2.13 (dynamo=False, opset 17): torch.stft's complex output has no ONNX
# symbolic, and with a convolutional STFT in its place nn.MultiheadAttention's export fixes the
# sequence length (onnxruntime: "cannot reshape {84,1,32} to {50,2,16}" on another length).
ONNX_NOT_WRITTEN = ("not exported: the content mel's torch.stft has no ONNX form (complex output) and "
                    "nn.MultiheadAttention's ONNX export fixes the sequence length; hifivc.ts is the portable file")


class ConvertError(ValueError):
    """Bad input or model for conversion; the message names the file and the reason."""


def build_hifivc(config: dict[str, Any]) -> HiFiVC:
    """HiFiVC from a bundle's or export's model config (keys HiFiVC does not take, like the
    discriminator's divisor, are the trainer's)."""
    names = set(inspect.signature(HiFiVC.__init__).parameters) - {"self"}
    return HiFiVC(**{k: v for k, v in config.items() if k in names})


@dataclass
class Converter:
    model: HiFiVC  # eval mode, weight norm removed
    config: dict[str, Any]  # the model config it was built from
    source: str  # what it was loaded from
    info: dict = field(default_factory=dict)  # run id, step, checkpoint, ...
    device: str = "cpu"
    sample_rate: int = OUTPUT_RATE

    @property
    def f0_norm(self) -> str:
        return self.model.f0.norm

    def prepare(self, src: np.ndarray, src_sr: int, ref: np.ndarray, ref_sr: int, pitch: Optional[str] = None,
                src_name: str = "source", ref_name: str = "reference"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(wav_src_16k [1, T], mel_ref_24k [1, 80, R], lf0 [1, T // 160], report): the model's
        three inputs, checked as the module docstring says."""
        from tasks.prep.audio import resample

        pitch = pitch or "match"
        if pitch not in PITCH_MODES:
            raise ConvertError(f"pitch: one of {list(PITCH_MODES)}, got {pitch!r}")
        if pitch == "follow" and self.f0_norm == "utterance":
            raise ConvertError("--pitch follow keeps the source's pitch level, which this model cannot: it "
                               "normalises F0 per utterance (vc.model.f0_norm: utterance), so the level is the "
                               "reference's; train with vc.model.f0_norm: none for follow")
        src = _mono(src, src_sr, src_name)
        ref = _mono(ref, ref_sr, ref_name)
        notes = []
        if src_sr < CONTENT_RATE:
            notes.append(f"{src_name}: {src_sr} Hz audio upsampled to {CONTENT_RATE} Hz: nothing above "
                         f"{src_sr // 2} Hz reaches the content encoder")
        src16 = resample(src, src_sr, CONTENT_RATE)
        if len(src16) < MIN_SOURCE_SECONDS * CONTENT_RATE:
            raise ConvertError(f"{src_name}: {len(src) / src_sr:.2f} s is too short to convert "
                               f"(at least {MIN_SOURCE_SECONDS} s)")
        if len(src16) > MAX_SOURCE_SECONDS * CONTENT_RATE:
            raise ConvertError(f"{src_name}: {len(src) / src_sr:.1f} s is longer than {MAX_SOURCE_SECONDS:.0f} s; "
                               "convert it in pieces")
        ref16, ref24 = resample(ref, ref_sr, CONTENT_RATE), resample(ref, ref_sr, OUTPUT_RATE)
        with torch.inference_mode():
            lf0_src = yin_lf0(torch.from_numpy(src16)[None])[0]
        if not (lf0_src > 0).any():
            raise ConvertError(f"{src_name}: no voiced frame (silence, noise or whisper): nothing to convert")
        active = speech_frames(ref16)
        frames = int(MAX_REFERENCE_SECONDS * CONTENT_RATE / CONTENT_HOP)
        start = 0
        if len(active) > frames:  # the window of `frames` with the most speech (of equals, the middle)
            csum = np.concatenate([[0], np.cumsum(active, dtype=np.int64)])
            counts = csum[frames:] - csum[:-frames]  # speech frames in each window
            best = np.flatnonzero(counts == counts.max())
            start = int(best[len(best) // 2])
        speech_seconds = float(active[start:start + frames].sum()) * CONTENT_HOP / CONTENT_RATE
        if speech_seconds < MIN_REFERENCE_VOICE:
            raise ConvertError(f"{ref_name}: {speech_seconds:.2f} s of voice in {len(ref) / ref_sr:.2f} s of audio; "
                               f"a reference needs at least {MIN_REFERENCE_VOICE:.0f} s of voice")
        per_frame = OUTPUT_RATE * CONTENT_HOP // CONTENT_RATE  # 240 samples at 24 kHz a 10 ms frame
        ref24 = ref24[start * per_frame:(start + frames) * per_frame]
        lf0 = lf0_src
        if pitch == "match" and self.f0_norm == "none":
            ref_f0 = yin_lf0(torch.from_numpy(resample(ref24, OUTPUT_RATE, CONTENT_RATE))[None])[0]
            if not (ref_f0 > 0).any():
                raise ConvertError(f"{ref_name}: no voiced frame to match the pitch to (use --pitch follow)")
            shift = _voiced_mean(ref_f0) - _voiced_mean(lf0_src)
            lf0 = torch.where(lf0_src > 0, lf0_src + shift, lf0_src)
        with torch.inference_mode():
            mel_ref = self.model.speaker_mel(torch.from_numpy(ref24)[None].to(self.device))
        report = {"source": {"seconds": round(len(src) / src_sr, 3), "sample_rate": int(src_sr)},
                  "reference": {"seconds": round(len(ref) / ref_sr, 3), "sample_rate": int(ref_sr),
                                "used": [round(start * CONTENT_HOP / CONTENT_RATE, 3),
                                         round(start * CONTENT_HOP / CONTENT_RATE + len(ref24) / OUTPUT_RATE, 3)],
                                "speech_seconds": round(speech_seconds, 3)},
                  "pitch": pitch, "f0_norm": self.f0_norm, "notes": notes}
        if pitch == "match" and self.f0_norm == "none":
            report["pitch_shift_semitones"] = round(float(shift) * 12 / np.log(2), 2)
        return (torch.from_numpy(src16)[None].to(self.device), mel_ref, lf0[None].to(self.device), report)

    def convert(self, src: np.ndarray, src_sr: int, ref: np.ndarray, ref_sr: int, pitch: Optional[str] = None,
                src_name: str = "source", ref_name: str = "reference") -> tuple[np.ndarray, dict[str, Any]]:
        """float32 audio at 24 kHz, as long as the source, and the report of what was used."""
        wav16, mel_ref, lf0, report = self.prepare(src, src_sr, ref, ref_sr, pitch, src_name, ref_name)
        with torch.inference_mode():
            out = self.model(wav16, mel_ref, lf0)[0].float().cpu().numpy()
        n = int(round(wav16.shape[1] * OUTPUT_RATE / CONTENT_RATE))
        out = out[:n]
        report["seconds"] = round(len(out) / OUTPUT_RATE, 3)
        return out, report


def _mono(x: np.ndarray, sr: int, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:  # [samples, channels], as soundfile reads: averaged, as decode does
        x = x.mean(axis=1)
    if x.ndim != 1 or not len(x):
        raise ConvertError(f"{name}: expected mono audio samples, got shape {list(x.shape)}")
    if int(sr) < MIN_RATE:
        raise ConvertError(f"{name}: {sr} Hz audio; conversion needs at least {MIN_RATE} Hz")
    if not np.isfinite(x).all():
        raise ConvertError(f"{name}: the audio holds NaN or infinite samples")
    return np.clip(x, -1.0, 1.0)


def speech_frames(x16: np.ndarray, floor_db: float = -50.0, range_db: float = 40.0) -> np.ndarray:
    """Which 10 ms frames of 16 kHz audio hold speech: RMS within `range_db` of the loudest frame
    and above `floor_db` dBFS (an energy detector: it counts unvoiced consonants too, which YIN's
    voicing does not; on LJ Speech YIN calls 35-45% of a clip voiced)."""
    n = len(x16) // CONTENT_HOP
    if n == 0:
        return np.zeros(0, bool)
    rms_db = 10 * np.log10(np.square(x16[: n * CONTENT_HOP].reshape(n, CONTENT_HOP)).mean(1) + 1e-12)
    return rms_db >= max(floor_db, float(rms_db.max()) - range_db)


def _voiced_mean(lf0: torch.Tensor) -> float:
    voiced = lf0 > 0
    return float(lf0[voiced].mean()) if bool(voiced.any()) else 0.0


def _ready(model: HiFiVC, device: str) -> HiFiVC:
    return model.remove_weight_norm().to(device).eval()


# ----------------------------------------------------------------------------- loading


def read_record(path: Path) -> dict:
    """The vc stage's run record; an error when the stage was off."""
    from tasks.core.checkpoints import read_stage_record

    return read_stage_record(path, "vc", "vc.enabled", "conversion model", ConvertError)


def _load_bundle(ref: str, params_path: Optional[PathLike], device: str) -> Converter:
    from tasks.core.checkpoints import CheckpointStore
    from tasks.core.config import find_repo_root, load_params
    from tasks.core.storage import open_storage
    from tasks.inference.synth import _checkpoint_location

    loc = _checkpoint_location(ref)
    if loc is None:
        raise ConvertError(f"{ref}: not a conversion model: expected the vc stage's record (train/vc.json), a "
                           "checkpoint bundle …/runs/vc-<id>/step_N or run folder, or an export folder with "
                           f"{EXPORT_CONFIG}")
    storage_root, run_id, step = loc
    path = Path(params_path) if params_path is not None else Path("params.yaml")
    params = load_params(path) if path.is_file() else None
    storage = open_storage(storage_root, find_repo_root(path), params.storage.endpoint_url if params else None,
                           params.storage.region if params else None)
    nets, state, manifest = CheckpointStore(storage, run_id).load(step)
    if NET not in nets or "model_config" not in state:
        raise ConvertError(f"{ref}: the bundle holds {sorted(nets)}, not a {NET} of the vc stage")
    try:
        model = build_hifivc(state["model_config"])
        model.load_state_dict(nets[NET], strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConvertError(f"{ref}: the bundle's weights do not fit its model config: {err}") from None
    uri = f"{storage_root.rstrip('/')}/runs/{run_id}/{CheckpointStore.bundle_name(manifest['step'])}"
    return Converter(_ready(model, device), dict(state["model_config"]), ref,
                     {"kind": "checkpoint", "run_id": run_id, "step": manifest["step"], "checkpoint": uri,
                      "encoder": state.get("encoder"), "lineage": manifest.get("lineage")}, device)


def _load_export(folder: Path, ref: str, device: str) -> Converter:
    from safetensors.torch import load_file

    try:
        config = json.loads((folder / EXPORT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConvertError(f"{folder / EXPORT_CONFIG}: not a readable export config ({err})") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT or "files" not in config:
        raise ConvertError(f"{folder / EXPORT_CONFIG}: not a {EXPORT_FORMAT} config")
    weights = folder / EXPORT_WEIGHTS
    try:
        want = config["files"]["safetensors"]["sha256"]
    except (KeyError, TypeError):
        raise ConvertError(f"{folder / EXPORT_CONFIG}: no files.safetensors.sha256") from None
    if not weights.is_file() or file_sha256(weights) != want:
        raise ConvertError(f"{weights}: missing, or its sha256 differs from {EXPORT_CONFIG}'s: the export is inconsistent")
    try:
        model = build_hifivc(config["model_config"]).remove_weight_norm()
        model.load_state_dict(load_file(str(weights)), strict=True)
    except Exception as err:  # safetensors' and load_state_dict's errors do not name the file
        raise ConvertError(f"{weights}: cannot load as HiFiVC({config.get('model_config')}): {err}") from None
    return Converter(model.to(device).eval(), dict(config["model_config"]), ref,
                     {"kind": "export", **{k: config.get(k) for k in ("run_id", "step", "checkpoint", "lineage")}},
                     device)


def load_converter(ref: PathLike, params_path: Optional[PathLike] = None, device: str = "cpu") -> Converter:
    """A Converter from any reference in the module docstring."""
    ref = os.fspath(ref)
    if not ref.startswith("s3://"):
        local = Path(ref.removeprefix("file://")).expanduser()
        if local.is_dir() and (local / EXPORT_CONFIG).is_file():
            return _load_export(local, ref, device)
        if local.is_file() and local.suffix == ".json":
            return _load_bundle(read_record(local)["checkpoint"]["uri"], params_path, device)
        if not local.exists() and "runs/" not in ref:
            raise ConvertError(f"{ref}: no such conversion model (not a run record, export folder or checkpoint URI)")
    return _load_bundle(ref, params_path, device)


# ----------------------------------------------------------------------------- export


def probe_inputs(model: HiFiVC, seconds: float = 1.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A deterministic (wav_src_16k, mel_ref_24k, lf0) for parity checks: a vowel-like tone with
    harmonics and noise (voiced frames for the F0 path), its 24 kHz twin as the reference."""
    g = torch.Generator().manual_seed(seed)
    t16 = torch.arange(int(seconds * CONTENT_RATE)) / CONTENT_RATE
    t24 = torch.arange(int(seconds * OUTPUT_RATE)) / OUTPUT_RATE
    f0 = 140.0 + 30.0 * torch.sin(2 * torch.pi * 1.5 * t16)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / CONTENT_RATE
    src = sum(0.1 / k * torch.sin(k * phase) for k in range(1, 6)) + 0.003 * torch.randn(len(t16), generator=g)
    ref = sum(0.1 / k * torch.sin(2 * torch.pi * k * 210.0 * t24) for k in range(1, 6)) + \
        0.003 * torch.randn(len(t24), generator=g)
    with torch.no_grad():
        mel, lf0 = model.preprocess(src[None].float(), ref[None].float())
    return src[None].float(), mel, lf0


def export_hifivc(converter: Converter, folder: PathLike, lineage: Optional[dict] = None) -> dict[str, Any]:
    """Write hifivc.safetensors, hifivc.ts and hifivc.json (last, with each file's size and sha256)
    into `folder`, atomically; returns the config written."""
    from safetensors.torch import save

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model = converter.model.cpu().eval()
    tmp = out / f".{EXPORT_TS}.tmp"
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(out / EXPORT_WEIGHTS, save(state, metadata={"format": "pt", "weight_norm": "removed"}))
        torch.jit.save(torch.jit.script(model), str(tmp))
        os.replace(tmp, out / EXPORT_TS)
        loaded = torch.jit.load(str(out / EXPORT_TS))
        inputs = probe_inputs(model)
        with torch.no_grad():
            eager, traced = model(*inputs), loaded(*inputs)
            pre_e, pre_t = model.preprocess(inputs[0], inputs[0]), loaded.preprocess(inputs[0], inputs[0])
    finally:
        tmp.unlink(missing_ok=True)
        converter.model.to(converter.device)
    parity = {"forward_max_abs_diff": float((eager - traced).abs().max()),
              "preprocess_max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(pre_e, pre_t)),
              "probe": "probe_inputs(): 1.3 s harmonic tone, seed 0"}
    files = {"safetensors": EXPORT_WEIGHTS, "torchscript": EXPORT_TS}
    config = {"format": EXPORT_FORMAT, "format_version": 1, "model_config": converter.config,
              "sample_rate": OUTPUT_RATE, "f0_norm": converter.f0_norm,
              **{k: converter.info.get(k) for k in ("run_id", "step", "checkpoint", "encoder")},
              "lineage": lineage if lineage is not None else converter.info.get("lineage"),
              "weight_norm": "removed", "parity": parity,
              "runtime": {"forward": "m(wav_src_16k float32 [1, T], mel_ref_24k [1, 80, T_ref], lf0 [1, T // 160]) "
                                     "-> wav_24k [1, ceil(T // 160 / 2) * 480]",
                          "preprocess": "m.preprocess(wav_src_16k [1, T], wav_ref_24k [1, T_ref]) -> "
                                        "(mel_ref_24k [1, 80, T_ref // 256], lf0 [1, T // 160])",
                          "mel_ref_24k": {**SPEAKER_MEL, "pad": "reflect (n_fft - hop) / 2 each side", "center": False,
                                          "magnitude": "sqrt(re^2 + im^2 + 1e-6)", "filters": "Slaney",
                                          "log": "ln(max(x, 1e-5))"},
                          "lf0": "YIN on the 16 kHz source, 10 ms hop, 1024-sample frames, 50-800 Hz, threshold 0.15, "
                                 "frames below -50 dB RMS unvoiced: ln(Hz) where voiced, 0 where not",
                          "audio": "float32 in [-1, 1], mono; resample to 16 kHz (source) and 24 kHz (reference) first"},
              "onnx": {"written": False, "reason": ONNX_NOT_WRITTEN},
              "files": {fmt: {"path": name, "bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}
                        for fmt, name in files.items()}}
    atomic_write_bytes(out / EXPORT_CONFIG, (json.dumps(config, indent=2, default=str) + "\n").encode())
    return config


def remove_export(folder: PathLike) -> None:
    """An earlier export's HiFi-VC files (the export now has none)."""
    for name in (EXPORT_CONFIG, EXPORT_WEIGHTS, EXPORT_TS):
        (Path(folder) / name).unlink(missing_ok=True)


__all__ = ["ConvertError", "Converter", "EXPORT_CONFIG", "EXPORT_TS", "build_hifivc", "export_hifivc",
           "load_converter", "probe_inputs", "read_record", "remove_export"]

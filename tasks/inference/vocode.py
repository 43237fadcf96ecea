"""WaveGlow inference: mel -> audio, and copy-synthesis (recording -> mel -> WaveGlow -> audio).

    vocoder = load_vocoder("train/waveglow.json")       # the waveglow stage's run record
    vocoder = load_vocoder("file://storage/runs/waveglow-<id>[/step_N]")   # a bundle or a run (latest)
    vocoder = load_vocoder("export")                    # an export folder holding waveglow/
    vocoder = load_vocoder("waveglow_256channels_universal_v5.pt")         # NVIDIA's file, a state dict
    wav = vocoder.vocode(mel, sigma=0.6, denoise=0.1)   # float32 at vocoder.sample_rate
    wav = vocoder.copy_synthesis(recording, sr)         # the recording's mel through the model

The mel is `model.waveglow.mel_spectrogram` with the model's data_config (NVIDIA's for its own
files: 22050 Hz, 1024/256/1024, 80 mels, 0-8000 Hz). Inference runs `WaveGlowInference` (weight
norm baked, the same numbers with less work; benchmarks/bench_waveglow.py) under
`torch.inference_mode`; the denoiser is NVIDIA's (mode 'zeros').

`export_waveglow(vocoder, folder)` writes the export: `waveglow/` with config.json,
model.safetensors (weight norm removed: NVIDIA's key names after its remove_weightnorm),
waveglow.ts (TorchScript) and waveglow.onnx, both (mel [B, M, F], sigma []) -> audio [B, F * 256].
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from model.waveglow import Denoiser, WaveGlow, WaveGlowInference, load_nvidia_checkpoint, mel_spectrogram
from tasks.core.config import WaveGlowDataConfig, find_repo_root, load_params
from tasks.core.storage import atomic_write_bytes, file_sha256

PathLike = Union[str, os.PathLike]
NET = "WaveGlow"
EXPORT_DIR = "waveglow"  # inside an export folder
EXPORT_CONFIG = "config.json"
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_FILES = {"safetensors": EXPORT_WEIGHTS, "torchscript": "waveglow.ts", "onnx": "waveglow.onnx"}
EXPORT_FORMAT = "vitsflow-waveglow"


class VocodeError(ValueError):
    """Bad input or model for vocoding; the message names the file and the reason."""


@dataclass
class Vocoder:
    model: WaveGlow  # eval mode, weight norm removed
    data_config: WaveGlowDataConfig
    source: str  # what it was loaded from
    info: dict = field(default_factory=dict)  # run id, step, format, ...
    device: str = "cpu"
    _denoiser: Optional[Denoiser] = None
    _fast: Optional[WaveGlowInference] = None

    @property
    def sample_rate(self) -> int:
        return self.data_config.sampling_rate

    @property
    def n_mel_channels(self) -> int:
        return self.model.n_mel_channels

    def mel(self, wav: np.ndarray, sr: int, name: str = "audio") -> np.ndarray:
        """Mono float audio at `sr` (== the vocoder's rate) -> its log mel [M, F] (NVIDIA's get_mel)."""
        if sr != self.sample_rate:
            raise VocodeError(f"{name}: {sr} Hz audio, the vocoder's mels are of {self.sample_rate} Hz audio "
                              "(resample it first, or pass --resample)")
        x = torch.from_numpy(np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0))[None]
        with torch.inference_mode():
            return mel_spectrogram(x, **self.data_config.mel_kwargs(self.n_mel_channels))[0].numpy()

    def vocode(self, mel: np.ndarray, sigma: float = 0.6, denoise: float = 0.1, seed: Optional[int] = 1234,
               name: str = "mel") -> np.ndarray:
        """log mel [M, F] -> float32 audio [F * 256] at the vocoder's rate (denoised when denoise > 0)."""
        mel = np.asarray(mel)
        if mel.ndim == 3 and mel.shape[0] == 1:
            mel = mel[0]
        if mel.ndim != 2 or mel.shape[0] != self.n_mel_channels:
            raise VocodeError(f"{name}: expected a mel of shape [{self.n_mel_channels}, frames], got {list(mel.shape)}")
        if mel.shape[1] < 1 or not np.isfinite(mel).all():
            raise VocodeError(f"{name}: the mel is empty or holds NaN/inf")
        if sigma < 0 or not 0 <= denoise <= 1:
            raise VocodeError(f"sigma must be >= 0 and denoise in [0, 1], got sigma {sigma}, denoise {denoise}")
        spect = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None].to(self.device)
        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        fast, denoiser = self.fast, (self.denoiser if denoise > 0 else None)  # built before the seed
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):  # seeded, the caller's RNG untouched
            if seed is not None:
                torch.manual_seed(seed)
            audio = fast.infer(spect, sigma=float(sigma))
            if denoiser is not None:
                audio = denoiser(audio, denoise)[:, 0]
        return audio[0].float().cpu().numpy()

    @property
    def fast(self) -> WaveGlowInference:
        if self._fast is None:
            with torch.inference_mode(False), torch.no_grad():
                self._fast = WaveGlowInference(self.model)
        return self._fast

    @property
    def denoiser(self) -> Denoiser:
        if self._denoiser is None:
            with torch.inference_mode(False), torch.no_grad():
                self._denoiser = Denoiser(self.model)
        return self._denoiser

    def copy_synthesis(self, wav: np.ndarray, sr: int, sigma: float = 0.6, denoise: float = 0.1,
                       seed: Optional[int] = 1234, resample: bool = True, name: str = "audio") -> np.ndarray:
        """A recording through its own mel and the vocoder: what a mel vocoder can reach on it."""
        from tasks.prep.audio import resample as resample_audio

        if resample:
            wav, sr = resample_audio(np.asarray(wav, dtype=np.float32), sr, self.sample_rate), self.sample_rate
        if len(wav) <= self.data_config.filter_length // 2:  # the STFT's reflect padding needs more
            raise VocodeError(f"{name}: {len(wav)} samples at {sr} Hz is too short for a mel "
                              f"(more than filter_length / 2 = {self.data_config.filter_length // 2} needed)")
        out = self.vocode(self.mel(wav, sr, name), sigma, denoise, seed, name=name)
        return out[: len(wav)]  # the mel's last frame covers up to a hop past the end


def _ready(model: WaveGlow, device: str) -> WaveGlow:
    if model.has_weight_norm:
        model.remove_weightnorm()
    return model.to(device).eval()


def read_record(path: Path) -> dict:
    """The waveglow stage's run record; an error when the stage was off."""
    from tasks.core.checkpoints import read_stage_record

    return read_stage_record(path, "waveglow", "vocoder.enabled", "vocoder", VocodeError)


def _load_bundle(ref: str, params_path: Optional[PathLike], device: str) -> Vocoder:
    from tasks.core.checkpoints import CheckpointStore
    from tasks.core.storage import open_storage
    from tasks.inference.synth import _checkpoint_location

    loc = _checkpoint_location(ref)
    if loc is None:
        raise VocodeError(f"{ref}: not a vocoder reference: expected a waveglow run record (train/waveglow.json), "
                          "a checkpoint bundle …/runs/<run_id>/step_N or run folder, an export folder with "
                          "waveglow/, or an NVIDIA .pt / state dict / safetensors file")
    storage_root, run_id, step = loc
    path = Path(params_path) if params_path is not None else Path("params.yaml")
    params = load_params(path) if path.is_file() else None
    root = find_repo_root(path)
    storage = open_storage(storage_root, root, params.storage.endpoint_url if params else None,
                           params.storage.region if params else None)
    nets, state, manifest = CheckpointStore(storage, run_id).load(step)
    if NET not in nets:
        raise VocodeError(f"{ref}: the bundle holds {sorted(nets)}, not a {NET}")
    model = WaveGlow(**state["waveglow_config"])
    try:
        model.load_state_dict(nets[NET], strict=True)
    except RuntimeError as err:
        raise VocodeError(f"{ref}: the bundle's weights do not fit its WaveGlow config: {err}") from None
    return Vocoder(_ready(model, device), WaveGlowDataConfig.model_validate(state["data_config"]), ref,
                   {"kind": "checkpoint", "run_id": run_id, "step": manifest["step"], "lineage": manifest.get("lineage"),
                    "checkpoint": f"{storage_root.rstrip('/')}/runs/{run_id}/{CheckpointStore.bundle_name(manifest['step'])}",
                    "waveglow_config": state["waveglow_config"]}, device)


def _load_export(folder: Path, ref: str, device: str) -> Vocoder:
    from model.waveglow import from_state_dict
    from safetensors.torch import load_file

    try:
        config = json.loads((folder / EXPORT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise VocodeError(f"{folder / EXPORT_CONFIG}: not a readable export config ({err})") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT or "files" not in config:
        raise VocodeError(f"{folder / EXPORT_CONFIG}: not a {EXPORT_FORMAT} config (format {config.get('format')!r})")
    weights = folder / EXPORT_WEIGHTS
    if file_sha256(weights) != config["files"]["safetensors"]["sha256"]:
        raise VocodeError(f"{weights}: sha256 differs from config.json's: the export is inconsistent")
    try:
        model = from_state_dict(load_file(str(weights)), config["waveglow_config"])
    except Exception as err:  # safetensors' and load_state_dict's errors do not name the file
        raise VocodeError(f"{weights}: cannot load as WaveGlow({config.get('waveglow_config')}): {err}") from None
    return Vocoder(_ready(model, device), WaveGlowDataConfig.model_validate(config["data_config"]), ref,
                   {"kind": "export", **{k: config.get(k) for k in ("run_id", "step", "checkpoint", "lineage")},
                    "waveglow_config": config["waveglow_config"]}, device)


def load_vocoder(ref: PathLike, params_path: Optional[PathLike] = None, device: str = "cpu",
                 data_config: Optional[WaveGlowDataConfig] = None) -> Vocoder:
    """A Vocoder from any reference in the module docstring. NVIDIA files carry no data_config:
    `data_config` (default NVIDIA's) says what their mels are."""
    ref = os.fspath(ref)
    if not ref.startswith("s3://"):
        local = Path(ref.removeprefix("file://")).expanduser()
        if local.is_dir() and (local / EXPORT_DIR / EXPORT_CONFIG).is_file():
            return _load_export(local / EXPORT_DIR, ref, device)
        if local.is_dir() and (local / EXPORT_CONFIG).is_file() and (local / EXPORT_WEIGHTS).is_file():
            return _load_export(local, ref, device)
        if local.is_file() and local.suffix == ".json":
            return _load_bundle(read_record(local)["checkpoint"]["uri"], params_path, device)
        if local.is_file():
            model, info = load_nvidia_checkpoint(local)
            return Vocoder(_ready(model, device), data_config or WaveGlowDataConfig(), ref,
                           {"kind": "file", **info}, device)
        if not local.exists() and "runs/" not in ref:
            raise VocodeError(f"{ref}: no such vocoder (not a file, folder or checkpoint URI)")
    return _load_bundle(ref, params_path, device)


def export_waveglow(vocoder: Vocoder, folder: PathLike, formats=("safetensors", "torchscript", "onnx"),
                    lineage: Optional[dict] = None) -> dict[str, Any]:
    """Write `folder`/waveglow/ (module docstring): every file atomically, config.json last, with
    each file's size and sha256; returns the config written."""
    from safetensors.torch import save

    from model.export import export_waveglow_onnx, export_waveglow_torchscript
    unknown = sorted(set(formats) - set(EXPORT_FILES))
    if unknown or "safetensors" not in formats:
        raise VocodeError(f"waveglow export formats: safetensors plus any of {sorted(EXPORT_FILES)}, got {list(formats)}")
    out = Path(folder) / EXPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    model = _ready(vocoder.model, vocoder.device)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / EXPORT_WEIGHTS, save(state, metadata={"format": "pt", "naming": "nvidia-waveglow"}))
    if "torchscript" in formats:
        export_waveglow_torchscript(model, out / EXPORT_FILES["torchscript"])
    if "onnx" in formats:
        export_waveglow_onnx(model, out / EXPORT_FILES["onnx"])
    config = {"format": EXPORT_FORMAT, "format_version": 1, "waveglow_config": model.config,
              "data_config": vocoder.data_config.model_dump(), "sample_rate": vocoder.sample_rate,
              **{k: vocoder.info.get(k) for k in ("run_id", "step", "checkpoint")},
              "lineage": lineage if lineage is not None else vocoder.info.get("lineage"),
              "weight_norm": "removed",
              "runtime": {"inputs": {"mel": "float32 [B, n_mel_channels, frames]: log mel (data_config)",
                                     "sigma": "float32 []: noise std (NVIDIA's inference.py: 0.6)"},
                          "outputs": {"audio": "float32 [B, frames * 256] at sample_rate (full scale 1.0; not clamped)"},
                          "noise": "drawn in the graph; sigma 0 gives a deterministic output",
                          "denoiser": "not in the graph: NVIDIA's Denoiser(mode='zeros') runs in vitsflow vocode"},
              "files": {fmt: {"path": EXPORT_FILES[fmt], "bytes": (out / EXPORT_FILES[fmt]).stat().st_size,
                              "sha256": file_sha256(out / EXPORT_FILES[fmt])} for fmt in formats}}
    for fmt, name in EXPORT_FILES.items():  # an earlier export's files in formats not written now
        if fmt not in formats:
            (out / name).unlink(missing_ok=True)
    atomic_write_bytes(out / EXPORT_CONFIG, (json.dumps(config, indent=2, default=str) + "\n").encode())
    return config


def read_mel(path: Path) -> np.ndarray:
    """A mel from a .npy file ([M, F] or [1, M, F]), or a clear error naming the file."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise VocodeError(f"{path}: not a readable .npy array ({err})") from None


__all__ = ["EXPORT_DIR", "EXPORT_FILES", "VocodeError", "Vocoder", "export_waveglow", "load_vocoder", "read_mel",
           "read_record"]

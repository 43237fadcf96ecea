"""Export of a trained generator as a self-contained inference bundle, and its loader.

`export_inference(generator, out_dir, ...)` writes into out_dir:

    model.safetensors  inference-only weights: the generator's state_dict in upstream's key naming
                       (weight_g / weight_v), without the posterior encoder (`enc_q.*`, training
                       only); discriminators are never part of a generator
    model.onnx         the inference path (model/export.py), opset 17, dynamic batch/text/output axes
    model.ts           the same as a TorchScript trace (torch.jit.load)
    config.json        everything a runtime needs besides the weights: symbol table, language ids
                       and tone offsets, the BERT slots, their width and the fill rule, frontend
                       versions, audio parameters, the model hyperparameters and variant, the
                       speaker map, lineage, the BERT batch shape policy its features were
                       computed with (bert.batch), the ONNX/TorchScript input and output names,
                       and the size and sha256 of every file

Every file is written to a temporary name and renamed into place; config.json comes last, so a
config always describes files that are complete (and its hashes catch a half-replaced bundle).
`load_inference(out_dir)` rebuilds the generator from config.json + model.safetensors, strictly.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from model.export import SCALAR_NAMES, InferenceModule, example_inputs, export_onnx, export_torchscript
from model.models import SynthesizerTrn
from model.upstream import load_state_dict_strict, to_upstream_state_dict
from tasks.core.config import SYNTHESIS_DEFAULTS
from tasks.core.storage import atomic_write_bytes, file_sha256
from tasks.frontends.symbols import SymbolTable
from tasks.prep.bert import FILL, SLOTS

PathLike = Union[str, os.PathLike]

FORMAT = "vitsflow-inference"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.ts"}
DEFAULT_FORMATS = ("safetensors", "onnx", "torchscript")
# Key prefixes left out of model.safetensors: the posterior encoder only serves training.
TRAINING_ONLY_PREFIXES = ("enc_q.",)
# The network input each BERT slot feeds (upstream 2.3's names).
SLOT_INPUTS = {"zh": "bert", "ja": "ja_bert", "en": "en_bert"}


class ExportError(ValueError):
    """The pieces handed to export_inference do not describe the generator (or each other)."""


# ----------------------------------------------------------------------------- helpers


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):  # pydantic models (tasks.core.config sections)
        return obj.model_dump(mode="json")
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _jsonable(value: Any) -> Any:
    """`value` as plain JSON data (tuples become lists, pydantic models dicts)."""
    return json.loads(json.dumps(value, default=_json_default))


def _unwrap(generator: nn.Module) -> SynthesizerTrn:
    """The SynthesizerTrn inside a DistributedDataParallel / DataParallel wrapper, if any."""
    inner = getattr(generator, "module", None)
    if isinstance(inner, SynthesizerTrn):
        generator = inner
    if not isinstance(generator, SynthesizerTrn):
        raise ExportError(f"expected a SynthesizerTrn, got {type(generator).__name__}")
    return generator


def inference_state_dict(generator: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The generator's weights for inference: upstream key names, training-only modules dropped,
    every tensor a contiguous CPU copy (safetensors refuses shared storage, e.g. a shared flow)."""
    sd = to_upstream_state_dict(_unwrap(generator))
    return OrderedDict((k, v.detach().to("cpu").contiguous().clone()) for k, v in sd.items()
                       if not k.startswith(TRAINING_ONLY_PREFIXES))


def _language_entry(code: str, cfg: Any, symbols: SymbolTable) -> dict[str, Any]:
    cfg = _jsonable(cfg) if cfg is not None else None
    bert_cfg = (cfg or {}).get("bert") if isinstance(cfg, dict) else None
    slot = (bert_cfg or {}).get("slot") or code  # as tasks.prep.bert.slot_of
    return {"id": symbols.language_ids[code], "tone_offset": symbols.tone_offsets[code], "bert_slot": slot,
            "config": cfg}


def _check(generator: SynthesizerTrn, symbols: SymbolTable, languages: Mapping[str, Any],
           audio: Mapping[str, Any], speakers: Mapping[str, int]) -> None:
    hp = generator.hparams
    problems = []
    if len(symbols.symbols) != hp["n_vocab"]:
        problems.append(f"the symbol table has {len(symbols.symbols)} symbols, the model's embedding "
                        f"{hp['n_vocab']}")
    if symbols.num_tones != hp["num_tones"]:
        problems.append(f"the symbol table has {symbols.num_tones} tones, the model {hp['num_tones']}")
    if len(symbols.language_ids) != hp["num_languages"]:
        problems.append(f"the symbol table has {len(symbols.language_ids)} languages, the model "
                        f"{hp['num_languages']}")
    unknown = sorted(set(languages) - set(symbols.language_ids))
    if unknown:
        problems.append(f"languages {unknown} are not in the symbol table ({sorted(symbols.language_ids)})")
    for code, cfg in languages.items():
        slot = _language_entry(code, cfg, symbols)["bert_slot"] if code in symbols.language_ids else code
        if hp["use_bert"] and slot not in SLOTS:
            problems.append(f"language {code!r}: BERT slot {slot!r} is not one of {list(SLOTS)}")
    bad = {name: sid for name, sid in speakers.items()
           if not isinstance(sid, int) or isinstance(sid, bool) or not 0 <= sid < hp["n_speakers"]}
    if bad:
        problems.append(f"speaker ids outside 0..{hp['n_speakers'] - 1}: {bad}")
    for key in ("sample_rate", "hop_length"):
        if key not in audio:
            problems.append(f"audio: {key!r} missing")
    hop = 1
    for rate in hp["upsample_rates"]:
        hop *= rate
    if "hop_length" in audio and audio["hop_length"] != hop:
        problems.append(f"audio.hop_length {audio['hop_length']} != the decoder's {hop} samples per frame")
    if problems:
        raise ExportError("cannot export: " + "; ".join(problems))


def _bert_section(generator: SynthesizerTrn) -> dict[str, Any]:
    hp = generator.hparams
    return {
        "used": bool(hp["use_bert"]),
        "slots": list(SLOTS),
        "inputs": {slot: SLOT_INPUTS[slot] for slot in SLOTS},
        "dims": {slot: (hp["bert_dim"] if hp["use_bert"] else None) for slot in SLOTS},
        "fill": FILL,
        "fill_rule": ("an utterance's features [bert_dim, n_phones] (word features repeated over their "
                      "phones) go to the slot of its language; every other slot gets zeros of the same "
                      "shape, as in training"),
    }


# ----------------------------------------------------------------------------- export


def export_inference(generator: nn.Module, out_dir: PathLike, symbols: SymbolTable, languages: Mapping[str, Any],
                     frontends: Mapping[str, Any], audio: Mapping[str, Any], model_hparams: Mapping[str, Any],
                     speakers: Mapping[str, int], lineage: Mapping[str, Any],
                     formats: Iterable[str] = DEFAULT_FORMATS, *, opset: int = 17,
                     example: Optional[dict] = None, bert_batch: Optional[Mapping[str, Any]] = None
                     ) -> dict[str, Any]:
    """Write the inference bundle of `generator` to out_dir (see the module docstring) and return
    the config written.

    symbols: the symbol table the model was trained with; languages: code -> language config
    (tasks.core.config.LanguageConfig or its dict; its bert.slot picks the BERT slot, default the code);
    frontends: versions of the text frontends; audio: at least sample_rate and hop_length;
    model_hparams: the model section as configured (params.model; recorded as given, while the
    generator's own constructor arguments are what load_inference rebuilds from);
    speakers: name -> speaker id; lineage: where the weights came from (run, step, data...).
    formats: any of "safetensors", "onnx", "torchscript". example: named inputs to trace with
    (default: random ones from model.export.example_inputs). bert_batch: the batch shape policy the
    features were computed with (params features.bert: batch_size, length_bucket, token_budget),
    recorded so that synthesis from the export computes them the same way.
    The tables are checked against the generator; a mismatch raises ExportError.
    """
    formats = tuple(dict.fromkeys(formats))
    unknown = sorted(set(formats) - set(FILES))
    if unknown or not formats:
        raise ExportError(f"formats: expected some of {list(FILES)}, got {list(formats)}")
    generator = _unwrap(generator)
    _check(generator, symbols, languages, audio, speakers)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A CPU copy for tracing (the trainer may hand over a CUDA module); weights are unaffected.
    on_cpu = all(t.device.type == "cpu" for t in [*generator.parameters(), *generator.buffers()])
    net = generator if on_cpu else _cpu_copy(generator)

    if "safetensors" in formats:
        from safetensors.torch import save

        metadata = {"format": "pt", "naming": "upstream", "variant": net.variant}
        atomic_write_bytes(out_dir / FILES["safetensors"],
                           _canonical_safetensors(save(inference_state_dict(net), metadata=metadata)))

    module = InferenceModule(net) if ({"onnx", "torchscript"} & set(formats)) else None
    if module is not None:
        trace_inputs = example or example_inputs(net)
        if "onnx" in formats:
            export_onnx(module, out_dir / FILES["onnx"], trace_inputs, opset=opset)
        if "torchscript" in formats:
            export_torchscript(module, out_dir / FILES["torchscript"], trace_inputs)

    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": net.variant,
        "model": {"variant": net.variant, "generator": _jsonable(net.hparams), "params": _jsonable(model_hparams)},
        "symbols": symbols.to_json(),
        "languages": {code: _language_entry(code, languages.get(code), symbols) for code in symbols.language_ids},
        "bert": {**_bert_section(net), **({"batch": _jsonable(dict(bert_batch))} if bert_batch else {})},
        "frontends": _jsonable(frontends),
        "audio": _jsonable(audio),
        "speakers": {str(k): int(v) for k, v in speakers.items()},
        "lineage": _jsonable(lineage),
        "weights": {"naming": "upstream", "dtype": "float32", "dropped_prefixes": list(TRAINING_ONLY_PREFIXES)},
        "files": {fmt: {"path": FILES[fmt], "bytes": (out_dir / FILES[fmt]).stat().st_size,
                        "sha256": file_sha256(out_dir / FILES[fmt])} for fmt in formats},
    }
    if module is not None:
        runtime = {"inputs": module.input_names, "outputs": module.output_names,
                   "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in module.dynamic_axes.items()},
                   "input_dtypes": {n: ("float32" if n in SCALAR_NAMES or n in SLOT_INPUTS.values() else "int64")
                                    for n in module.input_names},
                   "scalars": "noise_scale, length_scale, noise_scale_w, sdp_ratio: float32 tensors of shape []",
                   "defaults": {k: v for k, v in SYNTHESIS_DEFAULTS.items() if k in module.input_names},
                   "noise": "drawn in the graph; zero scales give a deterministic output"}
        if "onnx" in formats:
            config["onnx"] = {"opset": opset, "exporter": "torch.onnx.export(dynamo=False)", **runtime}
        if "torchscript" in formats:
            config["torchscript"] = {"method": "torch.jit.trace", **runtime}
    atomic_write_bytes(out_dir / CONFIG_NAME, (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode())
    for fmt, name in FILES.items():  # files of an earlier export in formats not written now
        if fmt not in formats:
            (out_dir / name).unlink(missing_ok=True)
    return config


def _canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its `__metadata__` keys sorted: safetensors serialises the
    metadata from a hash map, in an order that changes from process to process, so the same weights
    would give other bytes (and another DVC hash) on every export. Tensor entries and data stay."""
    import struct

    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header["__metadata__"].items())),
                  **{k: v for k, v in header.items() if k != "__metadata__"}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors pads it
    return struct.pack("<Q", len(text)) + text + data[8 + length:]


def _cpu_copy(generator: SynthesizerTrn) -> SynthesizerTrn:
    net = SynthesizerTrn(**generator.hparams)
    net.load_state_dict({k: v.detach().cpu() for k, v in generator.state_dict().items()})
    return net.eval()


# ----------------------------------------------------------------------------- load


def read_inference_config(out_dir: PathLike) -> dict[str, Any]:
    path = Path(out_dir) / CONFIG_NAME
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT:
        raise ExportError(f"{path}: not a {FORMAT} config (format {config.get('format')!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path}: format_version {config.get('format_version')!r}, this code reads "
                          f"{FORMAT_VERSION}")
    return config


def load_inference(out_dir: PathLike, map_location: Union[str, torch.device] = "cpu") -> SynthesizerTrn:
    """The generator of an inference bundle, in eval mode, rebuilt from config.json and
    model.safetensors: every key must match (strict), the file must match its recorded sha256.

    The posterior encoder is not part of the bundle, so the returned generator has none (`enc_q`
    is removed): `infer` works, the training forward does not."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    config = read_inference_config(out_dir)
    entry = config["files"].get("safetensors")
    if entry is None:
        raise ExportError(f"{out_dir}: the bundle has no safetensors weights (formats {sorted(config['files'])})")
    path = out_dir / entry["path"]
    if file_sha256(path) != entry["sha256"]:
        raise ExportError(f"{path}: sha256 differs from config.json's: the bundle is inconsistent")
    net = SynthesizerTrn(**config["model"]["generator"])
    del net.enc_q
    load_state_dict_strict(net, load_file(str(path), device="cpu"))
    if net.variant != config["variant"]:
        raise ExportError(f"{out_dir}: rebuilt a {net.variant!r} model, config says {config['variant']!r}")
    return net.to(map_location).eval()


__all__ = ["CONFIG_NAME", "DEFAULT_FORMATS", "ExportError", "FILES", "FORMAT", "FORMAT_VERSION", "SLOT_INPUTS",
           "TRAINING_ONLY_PREFIXES", "export_inference", "inference_state_dict", "load_inference",
           "read_inference_config"]


# ----------------------------------------------------------------------------- upstream format

UPSTREAM_DIR = "upstream"  # the upstream-format files' subfolder of an export folder
UPSTREAM_VERSION = "2.3"
UPSTREAM_BERT_DIM = 1024  # upstream 2.3's TextEncoder hard-codes its three BERT projections' width


def upstream_problems(generator: nn.Module, symbols: SymbolTable) -> list[str]:
    """Why upstream Bert-VITS2 2.3's own inference code could not run this generator (empty: it can).

    Upstream builds the network from its code's tables, not the config: len(symbols) = 112 symbols,
    12 tones, 3 languages (ZH, JP, EN) and 1024-wide BERT projections; its loader keeps a layer's
    random initial weights (with only a log line) where the checkpoint's shape differs. So a
    model trained with an extended symbol table (a language added through params.yaml), another
    BERT width (MiniLM's 384) or another variant is refused rather than exported to load wrongly."""
    from tasks.frontends.symbols import BASE_LANGUAGE_IDS, BASE_SYMBOLS, BASE_TONE_OFFSETS, BASE_NUM_TONES

    net = _unwrap(generator)
    hp = net.hparams
    problems = []
    if net.variant != "bert-vits2-2.3":
        problems.append(f"variant {net.variant!r}: upstream 2.3's inference builds a 'bert-vits2-2.3' network")
    if list(symbols.symbols) != list(BASE_SYMBOLS):
        extra = [s for s in symbols.symbols if s not in set(BASE_SYMBOLS)]
        problems.append(f"the symbol table was extended ({len(symbols.symbols)} symbols, upstream's {len(BASE_SYMBOLS)}"
                        + (f"; added {extra[:10]}{' ...' if len(extra) > 10 else ''}" if extra else "; reordered")
                        + "): upstream embeds len(its symbols), so added phones would index past its table")
    if dict(symbols.language_ids) != BASE_LANGUAGE_IDS or dict(symbols.tone_offsets) != BASE_TONE_OFFSETS \
            or symbols.num_tones != sum(BASE_NUM_TONES.values()):
        problems.append(f"languages {symbols.language_ids} / {symbols.num_tones} tones: upstream 2.3 knows "
                        f"{BASE_LANGUAGE_IDS} with {sum(BASE_NUM_TONES.values())} tones")
    if hp.get("use_bert", True) and hp.get("bert_dim") != UPSTREAM_BERT_DIM:
        problems.append(f"BERT width {hp.get('bert_dim')}: upstream 2.3's BERT projections take "
                        f"{UPSTREAM_BERT_DIM} (its zh/ja/en BERT models)")
    if not hasattr(net, "enc_q"):
        problems.append("the generator has no posterior encoder (an inference bundle): upstream's G_*.pth holds "
                        "the whole generator")
    if hp.get("n_vocab") != len(symbols.symbols):
        problems.append(f"the model embeds {hp.get('n_vocab')} symbols, the table has {len(symbols.symbols)}")
    return problems


def export_upstream(generator: nn.Module, out_dir: PathLike, symbols: SymbolTable, speakers: Mapping[str, int],
                    audio: Mapping[str, Any], step: int, *, add_blank: bool = True,
                    train: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Write `G_<step>.pth` + `config.json` to out_dir as upstream Bert-VITS2 2.3 writes them: the
    checkpoint is {"model": the generator's state_dict in upstream's naming (weight_g / weight_v),
    "iteration", "optimizer": None, "learning_rate"}; the config has upstream's "train", "data"
    (sampling_rate, filter_length, hop_length, win_length, n_mel_channels, mel_fmin, mel_fmax,
    add_blank, n_speakers, spk2id), "model" (the generator's hyperparameters under upstream's
    names) and "version": "2.3". upstream's infer.py then builds
    `SynthesizerTrn(len(symbols), filter_length // 2 + 1, segment_size // hop_length,
    n_speakers=n_speakers, **model)` and loads the file with utils.load_checkpoint.

    Refuses (ExportError, every reason listed) a model upstream's code cannot run: upstream_problems.
    Both files appear atomically, config.json last. Returns {"checkpoint", "config", "step"}."""
    from model.upstream import save_upstream_checkpoint, upstream_config

    net = _unwrap(generator)
    problems = upstream_problems(net, symbols)
    bad = {name: sid for name, sid in speakers.items() if not 0 <= int(sid) < net.hparams["n_speakers"]}
    if bad:
        problems.append(f"speaker ids outside 0..{net.hparams['n_speakers'] - 1}: {bad}")
    missing = [k for k in ("sample_rate", "hop_length", "n_fft", "win_length") if k not in audio]
    if missing:
        problems.append(f"audio: {missing} missing (upstream's data section needs them)")
    elif audio["n_fft"] // 2 + 1 != net.hparams["spec_channels"]:
        problems.append(f"audio.n_fft {audio['n_fft']}: the posterior encoder takes {net.hparams['spec_channels']} "
                        "bins (n_fft // 2 + 1)")
    if problems:
        raise ExportError("cannot export in upstream Bert-VITS2 2.3 format: " + "; ".join(problems))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    on_cpu = all(t.device.type == "cpu" for t in [*net.parameters(), *net.buffers()])
    cpu_net = net if on_cpu else _cpu_copy(net)
    data = {"sampling_rate": int(audio["sample_rate"]), "filter_length": int(audio["n_fft"]),
            "hop_length": int(audio["hop_length"]), "win_length": int(audio["win_length"]),
            "n_mel_channels": int(audio.get("n_mels", 128)), "mel_fmin": float(audio.get("fmin", 0.0) or 0.0),
            "mel_fmax": audio.get("fmax"), "max_wav_value": 32768.0, "add_blank": bool(add_blank),
            "n_speakers": int(net.hparams["n_speakers"]), "cleaned_text": True,
            "spk2id": {str(k): int(v) for k, v in sorted(speakers.items(), key=lambda kv: kv[1])}}
    config = upstream_config(cpu_net, data, _jsonable(dict(train or {})), version=UPSTREAM_VERSION)
    name = f"G_{int(step)}.pth"
    for old in out_dir.glob("G_*.pth"):  # one checkpoint per folder: an earlier export's goes
        if old.name != name:
            old.unlink()
    learning_rate = float((train or {}).get("learning_rate", 2e-4))
    save_upstream_checkpoint(cpu_net, out_dir / name, iteration=int(step), learning_rate=learning_rate)
    atomic_write_bytes(out_dir / CONFIG_NAME, (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode())
    return {"checkpoint": name, "config": CONFIG_NAME, "step": int(step)}

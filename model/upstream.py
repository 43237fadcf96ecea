"""Interchange with upstream Bert-VITS2 checkpoints (`G_*.pth`, `D_*.pth`, `DUR_*.pth`, `WD_*.pth`).

Upstream's files are `{"model": state_dict, "iteration", "optimizer", "learning_rate"}`. Our
modules are named exactly as upstream's; the one difference is weight normalisation: upstream
uses the deprecated `torch.nn.utils.weight_norm` (keys `<m>.weight_g`, `<m>.weight_v`), we use the
parametrization (keys `<m>.parametrizations.weight.original0/1`). `to_upstream_state_dict` /
`from_upstream_state_dict` are that one renaming (and the same for spectral norm); values are
untouched and the key order is preserved, so the files are interchangeable both ways.

Loading is strict: anything missing, unexpected or of another shape is an error that lists the
keys, unless an explicit allow-list covers it (e.g. `emb_g` when fine-tuning to a new speaker set).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from model.models import DEFAULT_VARIANT, SynthesizerTrn, build_generator

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# ours (suffix) -> upstream (suffix)
_TO_UPSTREAM = [
    ("parametrizations.weight.original0", "weight_g"),  # weight norm: g
    ("parametrizations.weight.original1", "weight_v"),  # weight norm: v
    ("parametrizations.weight.original", "weight_orig"),  # spectral norm: W
    ("parametrizations.weight.0._u", "weight_u"),  # spectral norm: power-iteration vectors
    ("parametrizations.weight.0._v", "weight_v"),
]


def _split(key: str) -> tuple[str, str]:
    """'a.b.weight_g' -> ('a.b.', 'weight_g'); top-level keys get an empty prefix."""
    i = key.rfind(".")
    return key[:i + 1], key[i + 1:]


def to_upstream_key(key: str) -> str:
    for ours, theirs in _TO_UPSTREAM:
        if key == ours or key.endswith("." + ours):
            return key[: len(key) - len(ours)] + theirs
    return key


def to_upstream_state_dict(model_or_state_dict: Union[nn.Module, Mapping[str, torch.Tensor]]
                           ) -> "OrderedDict[str, torch.Tensor]":
    """Our state_dict with upstream's key names (weight_g/weight_v, weight_orig/weight_u/weight_v)."""
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    return OrderedDict((to_upstream_key(k), v) for k, v in sd.items())


def from_upstream_state_dict(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Upstream key names -> ours. Keys already in our naming pass through, so it is idempotent.
    `weight_v` is weight norm's v next to a `weight_g`, spectral norm's v next to a `weight_orig`."""
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state_dict.items():
        prefix, leaf = _split(key)
        if leaf == "weight_g":
            leaf = "parametrizations.weight.original0"
        elif leaf == "weight_v":
            spectral = prefix + "weight_orig" in state_dict and prefix + "weight_g" not in state_dict
            leaf = "parametrizations.weight.0._v" if spectral else "parametrizations.weight.original1"
        elif leaf == "weight_orig":
            leaf = "parametrizations.weight.original"
        elif leaf == "weight_u":
            leaf = "parametrizations.weight.0._u"
        out[prefix + leaf] = value
    return out


# ----------------------------------------------------------------------------- strict loading


class StateDictMismatchError(RuntimeError):
    """A checkpoint does not fit the model. `missing`, `unexpected`, `reshaped` list the keys that no
    allow-list covers (reshaped: key -> (checkpoint shape, model shape))."""

    def __init__(self, missing: list[str], unexpected: list[str], reshaped: dict[str, tuple]):
        self.missing, self.unexpected, self.reshaped = missing, unexpected, reshaped
        lines = ["checkpoint does not match the model:"]

        def show(title, items):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items[:50])
                if len(items) > 50:
                    lines.append(f"    ... and {len(items) - 50} more")

        show("missing from the checkpoint", missing)
        show("unexpected in the checkpoint", unexpected)
        show("different shape (checkpoint -> model)",
             [f"{k}: {tuple(a)} -> {tuple(b)}" for k, (a, b) in reshaped.items()])
        lines.append("  (allow_missing / allow_unexpected / allow_resize name keys or module prefixes "
                     "that may differ, e.g. allow_resize=('emb_g',))")
        super().__init__("\n".join(lines))


@dataclass
class LoadReport:
    """What an allowed mismatch did: resized key -> (checkpoint shape, model shape); missing keys
    (kept at their init); unexpected keys (ignored)."""
    resized: dict[str, tuple] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _allowed(key: str, patterns: Iterable[str]) -> bool:
    """A pattern allows a key when it names the key or a module holding it ('emb_g' allows
    'emb_g.weight'); globs work the same way ('enc_p.*bert_proj' allows 'enc_p.ja_bert_proj.bias')."""
    return any(fnmatch.fnmatchcase(key, p) or fnmatch.fnmatchcase(key, p + ".*") for p in patterns)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           allow_resize: Iterable[str] = (), allow_missing: Iterable[str] = (),
                           allow_unexpected: Iterable[str] = ()) -> LoadReport:
    """Load a state_dict (ours or upstream's naming) into `model`, refusing silent mismatches.

    allow_resize: keys whose first dimension may differ (symbol/tone/language/speaker tables):
        the overlapping rows are copied, rows beyond the checkpoint's keep the model's init.
    allow_missing: keys the checkpoint may lack (they keep the model's init).
    allow_unexpected: checkpoint keys the model may lack (ignored).
    Every allowed difference is logged (WARNING). Raises StateDictMismatchError otherwise.
    """
    allow_resize, allow_missing, allow_unexpected = tuple(allow_resize), tuple(allow_missing), tuple(allow_unexpected)
    sd = from_upstream_state_dict(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    reshaped = {k: (tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape}

    def resizable(k):
        old, new = reshaped[k]
        return _allowed(k, allow_resize) and len(old) == len(new) and old[1:] == new[1:]

    bad = ([k for k in missing if not _allowed(k, allow_missing)],
           [k for k in unexpected if not _allowed(k, allow_unexpected)],
           {k: v for k, v in reshaped.items() if not resizable(k)})
    if any(bad):
        raise StateDictMismatchError(*bad)

    report = LoadReport(missing=missing, unexpected=unexpected)
    merged = OrderedDict()
    for k, current in own.items():
        if k not in sd:
            logger.warning("%s: not in the checkpoint, keeping its initial value (allowed)", k)
            merged[k] = current
        elif k in reshaped:
            old, new = reshaped[k]
            n = min(old[0], new[0])
            value = current.clone()
            value[:n] = sd[k][:n].to(dtype=value.dtype)
            merged[k] = value
            report.resized[k] = (old, new)
            logger.warning("%s: resized %s -> %s (copied the first %d rows; %s) (allowed)", k, old, new, n,
                           f"{new[0] - n} new rows keep their init" if new[0] > n else f"dropped {old[0] - n} rows")
        else:
            merged[k] = sd[k]
    for k in unexpected:
        logger.warning("%s: in the checkpoint but not in the model, ignored (allowed)", k)
    model.load_state_dict(merged, strict=True)
    return report


# ----------------------------------------------------------------------------- files


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """An upstream checkpoint file as {"model", "iteration", "optimizer", "learning_rate"}; a bare
    state_dict is wrapped. Tensors only: weights_only=True never runs pickled code."""
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    if isinstance(ckpt, Mapping) and "model" in ckpt and isinstance(ckpt["model"], Mapping):
        return dict(ckpt)
    return {"model": ckpt, "iteration": 0, "optimizer": None, "learning_rate": None}


def read_config(path: PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def generator_kwargs(config: Mapping[str, Any],
                     state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, Any]:
    """SynthesizerTrn arguments for an upstream config, as upstream's train_ms/infer compute them.

    Things upstream takes from its code rather than its config (table sizes, BERT width, which
    duration predictors exist) come from the checkpoint's shapes when one is given.
    """
    data, model = config["data"], dict(config["model"])
    model.pop("variant", None)
    # (upstream's option of a posterior encoder on the mel spectrogram changes its input width)
    spec_channels = (data["n_mel_channels"] if model.get("use_mel_posterior_encoder")
                     else data["filter_length"] // 2 + 1)
    kwargs: dict[str, Any] = dict(spec_channels=spec_channels,
                                  segment_size=config["train"]["segment_size"] // data["hop_length"],
                                  n_speakers=data["n_speakers"], **model)
    sd = from_upstream_state_dict(state_dict) if state_dict is not None else {}
    if sd:
        def rows(key):
            return int(sd[key].shape[0])
        kwargs.setdefault("n_vocab", rows("enc_p.emb.weight"))
        kwargs.setdefault("num_tones", rows("enc_p.tone_emb.weight"))
        kwargs.setdefault("num_languages", rows("enc_p.language_emb.weight"))
        kwargs.setdefault("use_bert", "enc_p.bert_proj.weight" in sd)
        if "enc_p.bert_proj.weight" in sd:
            kwargs.setdefault("bert_dim", int(sd["enc_p.bert_proj.weight"].shape[1]))
        kwargs.setdefault("use_sdp", any(k.startswith("sdp.") for k in sd))
        kwargs.setdefault("use_dp", any(k.startswith("dp.") for k in sd))
        kwargs.setdefault("use_transformer_flow", any(".enc.attn_layers." in k for k in sd if k.startswith("flow.")))
    kwargs.setdefault("n_vocab", 112)  # upstream's len(symbols)
    return kwargs


def load_generator(config_path: PathLike, checkpoint_path: PathLike, variant: Optional[str] = None, *,
                   allow_resize: Iterable[str] = (), allow_missing: Iterable[str] = (),
                   allow_unexpected: Iterable[str] = (), **overrides) -> SynthesizerTrn:
    """Our generator from an upstream `config.json` and `G_*.pth`, in eval mode.

    variant: build through build_generator (its flags checked against the config); default: the
    config's `model.variant` if any, else the structure the config and checkpoint describe.
    overrides: SynthesizerTrn arguments to change, e.g. n_speakers / n_vocab when fine-tuning
    (with allow_resize=("emb_g",) / ("enc_p.emb",)).
    """
    config = read_config(config_path)
    sd = read_checkpoint(checkpoint_path)["model"]
    kwargs = {**generator_kwargs(config, sd), **overrides}
    variant = variant or config["model"].get("variant")
    net_g = build_generator(variant, **kwargs) if variant else SynthesizerTrn(**kwargs)
    load_state_dict_strict(net_g, sd, allow_resize=allow_resize, allow_missing=allow_missing,
                           allow_unexpected=allow_unexpected)
    return net_g.eval()


def load_checkpoint(model: nn.Module, checkpoint_path: PathLike, **allow) -> dict[str, Any]:
    """Load any upstream-format checkpoint (G, D, DUR, WD) into `model` strictly; returns the
    file's iteration, learning_rate and optimizer state (None when not saved)."""
    ckpt = read_checkpoint(checkpoint_path)
    load_state_dict_strict(model, ckpt["model"], **allow)
    return {k: ckpt.get(k) for k in ("iteration", "learning_rate", "optimizer")}


def save_upstream_checkpoint(model: nn.Module, path: PathLike, iteration: int,
                             optimizer: Optional[torch.optim.Optimizer] = None,
                             learning_rate: Optional[float] = None) -> Path:
    """Write `model` in upstream's checkpoint format, loadable by upstream's utils.load_checkpoint.

    Our parameters come in upstream's order (bias, g, v per weight-normed layer), so an optimizer
    state saved here indexes the same tensors upstream's would. learning_rate defaults to the
    optimizer's, else upstream's default 2e-4. The file appears atomically.
    """
    if learning_rate is None:
        learning_rate = optimizer.param_groups[0]["lr"] if optimizer is not None else 2e-4
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save({"model": to_upstream_state_dict(model), "iteration": int(iteration),
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "learning_rate": float(learning_rate)}, tmp)
    os.replace(tmp, path)
    return path


def upstream_config(net_g: SynthesizerTrn, data: Mapping[str, Any], train: Optional[Mapping[str, Any]] = None,
                    version: str = "2.3") -> dict[str, Any]:
    """An upstream-style config.json dict for `net_g` (load_generator reads it back).

    data must give at least sampling_rate and hop_length; filter_length defaults to
    2 * (spec_channels - 1), n_speakers to the model's. Our extra model keys (variant,
    num_tones, bert_dim, ...) are ones upstream's SynthesizerTrn swallows in **kwargs; n_vocab,
    spec_channels, segment_size and n_speakers stay out of `model` because upstream passes them
    itself (a second value would be a TypeError there).
    """
    hp = dict(net_g.hparams)
    data = {"filter_length": 2 * (hp["spec_channels"] - 1), "n_speakers": hp["n_speakers"], **data}
    train = {"segment_size": hp["segment_size"] * data["hop_length"], **(train or {})}
    for k in ("n_vocab", "spec_channels", "segment_size", "n_speakers"):
        hp.pop(k)
    if net_g.variant != "custom":
        hp["variant"] = net_g.variant
    return {"train": train, "data": data, "model": hp, "version": version}


def save_upstream_config(net_g: SynthesizerTrn, path: PathLike, data: Mapping[str, Any],
                         train: Optional[Mapping[str, Any]] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(upstream_config(net_g, data, train), indent=2), encoding="utf-8")
    return path


__all__ = [
    "DEFAULT_VARIANT", "LoadReport", "StateDictMismatchError", "from_upstream_state_dict", "generator_kwargs",
    "load_checkpoint", "load_generator", "load_state_dict_strict", "read_checkpoint", "read_config",
    "save_upstream_checkpoint", "save_upstream_config", "to_upstream_key", "to_upstream_state_dict",
    "upstream_config",
]

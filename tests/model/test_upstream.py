"""Upstream Bert-VITS2 2.3 compatibility: state_dict names and shapes, bit-level conformance on a
checkpoint made by upstream's own code, strict loading with explicit allow-lists, export round trip."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from model.models import SynthesizerTrn, WavLMDiscriminator, build_discriminators, build_generator
from model.upstream import (StateDictMismatchError, from_upstream_state_dict, generator_kwargs, load_checkpoint,
                            load_generator, load_state_dict_strict, read_checkpoint, save_upstream_checkpoint,
                            save_upstream_config, to_upstream_state_dict)

CONFORMANCE = Path(__file__).resolve().parents[1] / "data" / "conformance"
TINY_DIR = CONFORMANCE / "bv2_23_tiny"



@pytest.fixture(scope="module")
def shapes_json() -> dict:
    return json.loads((CONFORMANCE / "bv2_23_state_dict_shapes.json").read_text())


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    assert (TINY_DIR / "G_0.pth").is_file(), f"conformance data missing at {TINY_DIR}"
    return TINY_DIR


@pytest.fixture()
def tiny_g(tiny_dir) -> SynthesizerTrn:
    return load_generator(tiny_dir / "config.json", tiny_dir / "G_0.pth")


def test_state_dict_names_and_shapes_equal_upstream_2_3(shapes_json):
    """G, D, DUR and WD at upstream's published 2.3 config have upstream's exact keys (in order)
    and shapes, through the one weight-norm mapping. Built on the meta device: shapes only."""
    config = {"model": shapes_json["config_model"], "data": shapes_json["config_data"],
              "train": {"segment_size": 16384}}
    kwargs = generator_kwargs(config)
    kwargs.update(n_vocab=shapes_json["n_symbols"], num_tones=shapes_json["num_tones"],
                  num_languages=shapes_json["num_languages"])
    assert kwargs["spec_channels"] == 1025 and kwargs["n_speakers"] == 850
    model_cfg = shapes_json["config_model"]
    with torch.device("meta"):
        nets = {"G": build_generator("bert-vits2-2.3", **kwargs),
                **build_discriminators("bert-vits2-2.3", model_cfg["hidden_channels"], model_cfg["gin_channels"],
                                       model_cfg["use_spectral_norm"], model_cfg["slm"])}
    assert set(nets) == {"G", "D", "DUR", "WD"}
    for name, net in nets.items():
        ours = [(k, list(v.shape)) for k, v in to_upstream_state_dict(net).items()]
        theirs = list(shapes_json[name].items())
        assert dict(ours) == dict(theirs), name
        assert ours == theirs, f"{name}: same keys, different order"
        # and back: upstream names map onto exactly our keys
        assert list(from_upstream_state_dict(dict.fromkeys(shapes_json[name], 0))) == list(net.state_dict())


def test_conformance_with_upstream_inference(tiny_g, tiny_dir):
    """Upstream 2.3's own output for one inference call (noise 0, sdp_ratio 0) is reproduced."""
    inputs = torch.load(tiny_dir / "inputs.pt", weights_only=True)
    expected = torch.load(tiny_dir / "expected.pt", weights_only=True)
    assert not tiny_g.training
    with torch.no_grad():
        o, attn, y_mask, (z, z_p, m_p, logs_p) = tiny_g.infer(**inputs)
    got = {"audio": o, "attn": attn, "y_mask": y_mask, "m_p": m_p, "logs_p": logs_p, "z": z}
    assert set(expected) <= set(got)
    for key, want in expected.items():
        assert got[key].shape == want.shape, key
        assert (got[key] - want).abs().max().item() <= 1e-4, key


def test_loaded_checkpoint_keeps_upstream_names_and_values(tiny_g, tiny_dir):
    saved = read_checkpoint(tiny_dir / "G_0.pth")
    assert saved["iteration"] == 0
    ours = to_upstream_state_dict(tiny_g)
    assert list(ours) == list(saved["model"])
    assert all(torch.equal(ours[k], v) for k, v in saved["model"].items())


def test_export_reload_round_trip(tiny_g, tiny_dir, tmp_path):
    opt = torch.optim.AdamW(tiny_g.parameters(), lr=3e-4)
    ckpt = save_upstream_checkpoint(tiny_g, tmp_path / "G_7.pth", iteration=7, optimizer=opt)
    cfg = save_upstream_config(tiny_g, tmp_path / "config.json", data={"sampling_rate": 44100, "hop_length": 512})
    raw = torch.load(ckpt, weights_only=True)
    assert set(raw) == {"model", "iteration", "optimizer", "learning_rate"}
    assert raw["iteration"] == 7 and raw["learning_rate"] == pytest.approx(3e-4)
    # The exported file has upstream's exact keys, so upstream's loader would take it.
    assert list(raw["model"]) == list(torch.load(tiny_dir / "G_0.pth", weights_only=True)["model"])

    again = load_generator(cfg, ckpt)
    assert again.variant == tiny_g.variant == "bert-vits2-2.3"
    a, b = tiny_g.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    inputs = torch.load(tiny_dir / "inputs.pt", weights_only=True)
    with torch.no_grad():
        assert torch.equal(tiny_g.infer(**inputs)[0], again.infer(**inputs)[0])
    assert load_checkpoint(again, ckpt)["iteration"] == 7


def test_strict_loading_names_every_mismatch(tiny_g, tiny_dir):
    sd = dict(read_checkpoint(tiny_dir / "G_0.pth")["model"])
    del sd["dp.proj.bias"]
    sd["enc_p.not_a_layer.weight"] = torch.zeros(3)
    sd["emb_g.weight"] = torch.zeros(7, sd["emb_g.weight"].shape[1])
    with pytest.raises(StateDictMismatchError) as err:
        load_state_dict_strict(tiny_g, sd)
    e = err.value
    assert e.missing == ["dp.proj.bias"] and e.unexpected == ["enc_p.not_a_layer.weight"]
    assert e.reshaped == {"emb_g.weight": ((7, 32), (4, 32))}
    for key in ("dp.proj.bias", "enc_p.not_a_layer.weight", "emb_g.weight"):
        assert key in str(e)
    # a resize of anything but the first dimension is never allowed
    sd = dict(read_checkpoint(tiny_dir / "G_0.pth")["model"])
    sd["emb_g.weight"] = torch.zeros(4, 16)
    with pytest.raises(StateDictMismatchError, match="emb_g.weight"):
        load_state_dict_strict(tiny_g, sd, allow_resize=["emb_g"])


def test_allow_lists(tiny_g, tiny_dir, caplog):
    sd = dict(read_checkpoint(tiny_dir / "G_0.pth")["model"])
    before = {k: v.clone() for k, v in tiny_g.state_dict().items()}
    del sd["dp.proj.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with caplog.at_level(logging.WARNING, logger="model.upstream"):
        report = load_state_dict_strict(tiny_g, sd, allow_missing=["dp.proj"], allow_unexpected=["extra.*"])
    assert report.missing == ["dp.proj.bias"] and report.unexpected == ["extra.weight"]
    assert torch.equal(tiny_g.state_dict()["dp.proj.bias"], before["dp.proj.bias"])
    assert "dp.proj.bias" in caplog.text and "extra.weight" in caplog.text


def test_allowed_resizes_for_new_speakers_and_symbols(tiny_dir, caplog):
    """Fine-tuning to 6 speakers and a symbol/tone/language table extended past upstream's."""
    saved = read_checkpoint(tiny_dir / "G_0.pth")["model"]
    torch.manual_seed(0)
    tables = ("emb_g", "enc_p.emb", "enc_p.tone_emb", "enc_p.language_emb")
    with caplog.at_level(logging.WARNING, logger="model.upstream"):
        net_g = load_generator(tiny_dir / "config.json", tiny_dir / "G_0.pth", n_speakers=6, n_vocab=120,
                               num_tones=14, num_languages=5, allow_resize=tables)
    for table, rows in zip(tables, (4, 112, 12, 3)):
        key = table + ".weight"
        new = net_g.state_dict()[key]
        assert torch.equal(new[:rows], saved[key]), key  # the overlap is copied
        assert new.shape[0] > rows and new[rows:].abs().sum() > 0, key  # new rows keep their init
        assert key in caplog.text
    assert len([r for r in caplog.records if "resized" in r.getMessage()]) == 4
    # shrinking is allowed too when asked for (e.g. keeping 2 of 4 speakers)
    small = load_generator(tiny_dir / "config.json", tiny_dir / "G_0.pth", n_speakers=2, allow_resize=["emb_g"])
    assert torch.equal(small.emb_g.weight, saved["emb_g.weight"][:2])
    # without the allow-list the same load is an error naming the key
    with pytest.raises(StateDictMismatchError, match="emb_g.weight"):
        load_generator(tiny_dir / "config.json", tiny_dir / "G_0.pth", n_speakers=6)


def test_variant_mismatch_is_an_error(tiny_dir):
    """An upstream 2.3 checkpoint loaded as the BERT-less VITS2 variant: the BERT projections are
    unexpected, named, unless explicitly dropped."""
    with pytest.raises(StateDictMismatchError, match="enc_p.bert_proj.weight"):
        load_generator(tiny_dir / "config.json", tiny_dir / "G_0.pth", variant="vits2", use_bert=False)
    net = load_generator(tiny_dir / "config.json", tiny_dir / "G_0.pth", variant="vits2", use_bert=False,
                         allow_unexpected=["enc_p.*bert_proj"])
    assert net.variant == "vits2"


def test_spectral_norm_keys_map_to_upstream_names():
    def make():
        return WavLMDiscriminator(slm_hidden=12, slm_layers=3, initial_channel=8, use_spectral_norm=True)
    d = make()
    up = to_upstream_state_dict(d)
    assert {"convs.0.weight_orig", "convs.0.weight_u", "convs.0.weight_v", "convs.0.bias"} <= set(up)
    assert not any("parametrizations" in k for k in up)
    assert list(from_upstream_state_dict(up)) == list(d.state_dict())
    other = make()
    load_state_dict_strict(other, up)
    x = torch.randn(1, 36, 20)
    d.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(d(x), other(x))


def test_discriminator_checkpoints_round_trip(tmp_path):
    def make():
        return WavLMDiscriminator(slm_hidden=12, slm_layers=3, initial_channel=8)
    wd = make()
    path = save_upstream_checkpoint(wd, tmp_path / "WD_0.pth", iteration=0)
    assert "pre.weight_g" in torch.load(path, weights_only=True)["model"]
    clone = make()
    load_checkpoint(clone, path)
    assert all(torch.equal(a, b) for a, b in zip(wd.state_dict().values(), clone.state_dict().values()))


@pytest.mark.parametrize("variant", ["vits2", "vits"])
def test_other_variants_export_and_reload(variant, tmp_path):
    net_g = build_generator(variant, n_vocab=30, spec_channels=33, segment_size=8, inter_channels=16,
                            hidden_channels=16, filter_channels=32, n_heads=2, n_layers=3, kernel_size=3,
                            p_dropout=0.1, resblock="2", resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
                            upsample_rates=[4, 4], upsample_initial_channel=32, upsample_kernel_sizes=[8, 8],
                            n_speakers=2, gin_channels=8, n_flow_layer=2, n_layers_trans_flow=3, num_tones=4,
                            num_languages=2)
    ckpt = save_upstream_checkpoint(net_g, tmp_path / "G_1.pth", iteration=1)
    cfg = save_upstream_config(net_g, tmp_path / "config.json", data={"sampling_rate": 22050, "hop_length": 16})
    again = load_generator(cfg, ckpt)
    assert again.variant == variant and again.hparams == net_g.hparams
    a, b = net_g.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)

"""tasks/orchestration/export.py and `vitsflow export`: every model reference kind, the bundle, and the
upstream Bert-VITS2 2.3 format (G_<step>.pth + config.json) loaded the way upstream's infer.py loads it.

Two random-weight checkpoints on file:// storage: the tiny corpus's (tests/tasks/inference/test_synth.py;
its symbol table is extended with German and its BERT is 384-wide MiniLM, so upstream cannot run it)
and one with upstream's own tables (112 symbols, 12 tones, 3 languages, 1024-wide BERT)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from model.export import example_inputs
from model.models import SynthesizerTrn
from model.upstream import from_upstream_state_dict
from tasks.frontends.symbols import BASE_SYMBOLS, SymbolTable
from tasks.inference.export import ExportError, FILES, load_inference
from tasks.inference.synth import SynthError, load_voice
from tasks.orchestration.export import SUMMARY_NAME, export_model, judged_checkpoint
from tests.tasks.inference.test_synth import build_models

pytestmark = pytest.mark.slow  # exports to ONNX and TorchScript

ZERO_NOISE = dict(noise_scale=0.0, length_scale=1.0, noise_scale_w=0.0, sdp_ratio=0.0)
# The arguments upstream 2.3's SynthesizerTrn.__init__ takes by name, and the kwargs it reads
# (models.py); every other config.json model key is swallowed by its **kwargs and has no effect.
UPSTREAM_ARGS = {"inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers", "kernel_size",
                 "p_dropout", "resblock", "resblock_kernel_sizes", "resblock_dilation_sizes", "upsample_rates",
                 "upsample_initial_channel", "upsample_kernel_sizes", "gin_channels", "use_sdp", "n_flow_layer",
                 "n_layers_trans_flow", "flow_share_parameter", "use_transformer_flow",
                 "use_spk_conditioned_encoder", "use_noise_scaled_mas", "mas_noise_scale_initial",
                 "noise_scale_delta"}
UPSTREAM_RUN = "upstream-compatible"
runner = CliRunner()


def upstream_compatible_checkpoint(params_path: Path, step: int = 7) -> str:
    """A checkpoint bundle with upstream 2.3's tables (what a fine-tune of upstream's base model has),
    saved as the trainer saves one; returns its URI."""
    from tasks.core.checkpoints import CheckpointStore
    from tasks.core.config import find_repo_root, load_params
    from tasks.frontends import backend_info
    from tasks.prep.spec import stft_settings
    from tasks.core.storage import storage_from_config
    from tasks.training.train import generator as build_g

    params = load_params(params_path)
    symbols = SymbolTable()
    torch.manual_seed(1)
    g = build_g(params.model, symbols, 3, 1024, params.features.spec.n_fft,
                params.train.segment_size // params.features.spec.hop_length)
    with torch.no_grad():  # coupling/spline outputs start at zero: make them matter
        for name, p in g.named_parameters():
            if name.endswith(("post.weight", "proj.weight")) and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    state = {"step": step, "speakers": ["alice", "bob", "carol"], "symbols": symbols.to_json(),
             "frontends": {c: backend_info(params.languages[c].g2p)[1] for c in ("zh", "ja", "en")},
             "model": params.model.model_dump(mode="json"), "sample_rate": params.audio.sample_rate,
             "stft": stft_settings(params)}
    root = find_repo_root(params_path)
    CheckpointStore(storage_from_config(params.storage, root), UPSTREAM_RUN).save(
        step, {"G": g.state_dict()}, state, {"val_loss": None}, {})
    return f"file://{root}/storage/runs/{UPSTREAM_RUN}/step_{step:08d}"


@pytest.fixture(scope="module")
def models(train_corpus, tmp_path_factory):
    m = build_models(train_corpus, tmp_path_factory.mktemp("export"))
    m["upstream_ok"] = upstream_compatible_checkpoint(Path(m["params"]))
    return m


def _summary(out: Path) -> dict:
    return json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))


def test_a_checkpoint_bundle_exports_the_bundle_and_says_why_upstream_cannot_run_it(models, tmp_path):
    summary = export_model(models["bundle"], tmp_path, models["params"], ["safetensors"])
    assert summary == _summary(tmp_path)
    assert summary["run_id"] == "synth-test" and summary["step"] == 3 and summary["formats"] == ["safetensors"]
    assert summary["upstream"] == {"written": False, "reasons": ["not requested"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "export.json", "model.safetensors"]
    voice = load_voice(tmp_path)  # the bundle loads on its own and sounds like its checkpoint
    ckpt = load_voice(models["bundle"], models["params"])
    a = voice.infer("Where are you going?", "en", "en_m1", **ZERO_NOISE).wav
    b = ckpt.infer("Where are you going?", "en", "en_m1", **ZERO_NOISE).wav
    assert a.shape == b.shape and abs(a - b).max() <= 1e-5

    auto = export_model(models["bundle"], tmp_path / "auto", models["params"], None)  # default: all, upstream if it can
    assert auto["formats"] == ["safetensors", "onnx", "torchscript"] and not auto["upstream"]["written"]
    reasons = " ".join(auto["upstream"]["reasons"])
    assert "symbol table was extended" in reasons and "BERT width 384" in reasons
    assert not (tmp_path / "auto" / "upstream").exists()
    assert {p.name for p in (tmp_path / "auto").iterdir()} >= set(FILES.values())


def test_an_export_records_the_bert_batch_policy_it_was_made_with_and_synthesis_from_it_uses_it(models, tmp_path):
    params = json.loads(Path(models["params"]).read_text(encoding="utf-8"))
    params["features"]["bert"].update(batch_size=4, length_bucket=16, token_budget=64)
    other = tmp_path / "params.json"
    other.write_text(json.dumps(params), encoding="utf-8")
    export_model(models["bundle"], tmp_path / "out", other, ["safetensors"])
    config = json.loads((tmp_path / "out" / "config.json").read_text(encoding="utf-8"))
    assert config["bert"]["batch"] == {"batch_size": 4, "length_bucket": 16, "token_budget": 64}
    voice = load_voice(tmp_path / "out")  # no params: the export's own policy, not the defaults
    assert (voice.bert_stage.batch_size, voice.bert_stage.length_bucket, voice.bert_stage.token_budget) == (4, 16, 64)
    assert load_voice(tmp_path / "out", models["params"]).bert_stage.length_bucket == 16  # params do not override it
    config["bert"]["batch"]["token_budget"] = 0  # a hand-edited export: refused, naming the key
    (tmp_path / "out" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(SynthError, match=r"config\.json bert\.batch.*token_budget"):
        load_voice(tmp_path / "out")


def test_asking_for_the_upstream_format_of_a_model_upstream_cannot_run_is_refused_with_every_reason(models, tmp_path):
    with pytest.raises(ExportError, match=r"upstream Bert-VITS2 2\.3 format: .*symbol table was extended.*"
                                          r"BERT width 384"):
        export_model(models["bundle"], tmp_path, models["params"], ["safetensors", "upstream"])
    assert not (tmp_path / "upstream").exists() and not (tmp_path / "model.safetensors").exists()


def test_every_model_reference_kind_exports_its_checkpoint_and_production_is_recorded(models, tmp_path):
    storage = Path(models["params"]).parent / "storage"
    run_record = tmp_path / "run.json"  # what the train stage writes
    run_record.write_text(json.dumps({"run_id": "synth-test", "checkpoint": {"uri": models["bundle"], "step": 3}}))
    pointer = storage / "models" / "demo" / "production.json"  # what the evaluate stage's promotion writes
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(json.dumps({"model_name": "demo", "run_id": "synth-test",
                                   "checkpoint": {"uri": models["bundle"], "step": 3}}))
    params = json.loads(Path(models["params"]).read_text())
    params["eval"]["promotion"]["model_name"] = "demo"
    params_path = tmp_path / "params.yaml"
    params_path.write_text(json.dumps(params))
    (tmp_path / "storage").symlink_to(storage)  # the params' storage (file://storage) next to them
    try:
        refs = {"bundle": models["bundle"], "bundle path": models["bundle"].removeprefix("file://"),
                "run folder": models["run"], "run record": str(run_record), "production": "production",
                "named production": "production:demo", "pointer file": str(pointer)}
        for kind, ref in refs.items():
            s = export_model(ref, tmp_path / kind, params_path, ["safetensors"])
            assert (s["run_id"], s["step"], s["model"]) == ("synth-test", 3, ref), kind
            assert s["production"]["is_production"] and s["production"]["model_name"] == "demo", kind
        other = export_model(models["upstream_ok"], tmp_path / "other", params_path, ["safetensors"])
        assert other["production"] == {"model_name": "demo", "is_production": False,
                                       "pointer_checkpoint": models["bundle"]}
        with pytest.raises(SynthError, match=r"production:nobody: no production model: "
                                             r"models/nobody/production.json does not exist"):
            export_model("production:nobody", tmp_path / "none", params_path)
        with pytest.raises(SynthError, match="an export folder is exported already"):
            export_model(models["export"], tmp_path / "again", params_path)
    finally:
        (tmp_path / "storage").unlink()


def test_the_upstream_format_loads_the_way_upstream_infer_loads_it_and_sounds_the_same(models, tmp_path):
    """upstream infer.py: SynthesizerTrn(len(symbols), filter_length // 2 + 1, segment_size //
    hop_length, n_speakers=n_speakers, **hps.model), then load_checkpoint of G_*.pth; our model/ is
    upstream's network (tests/model/test_upstream.py), built here only from what upstream reads."""
    summary = export_model(models["upstream_ok"], tmp_path, models["params"], ["safetensors", "upstream"])
    assert summary["upstream"] == {"written": True, "folder": "upstream", "checkpoint": "G_7.pth",
                                   "config": "config.json", "step": 7}
    assert sorted(p.name for p in (tmp_path / "upstream").iterdir()) == ["G_7.pth", "config.json"]
    hps = json.loads((tmp_path / "upstream" / "config.json").read_text())
    assert hps["version"] == "2.3" and {"train", "data", "model"} <= set(hps)
    data = hps["data"]
    assert data["spk2id"] == {"alice": 0, "bob": 1, "carol": 2} and data["n_speakers"] == 3
    assert (data["sampling_rate"], data["hop_length"], data["add_blank"]) == (22050, 256, True)
    ckpt = torch.load(tmp_path / "upstream" / "G_7.pth", weights_only=True, map_location="cpu")
    assert set(ckpt) == {"model", "iteration", "optimizer", "learning_rate"} and ckpt["iteration"] == 7
    assert not any("parametrizations" in k for k in ckpt["model"])  # upstream's weight_g / weight_v naming
    assert any(k.endswith(".weight_g") for k in ckpt["model"]) and any(k.startswith("enc_q.") for k in ckpt["model"])

    net = SynthesizerTrn(len(BASE_SYMBOLS), data["filter_length"] // 2 + 1,
                         hps["train"]["segment_size"] // data["hop_length"], n_speakers=data["n_speakers"],
                         **{k: v for k, v in hps["model"].items() if k in UPSTREAM_ARGS})
    net.load_state_dict(from_upstream_state_dict(ckpt["model"]), strict=True)
    net.eval()
    ours = load_voice(models["upstream_ok"], models["params"]).generator
    bundle = load_inference(tmp_path)
    worst = 0.0
    for length, speaker in ((9, "alice"), (23, "carol")):
        inputs = {**example_inputs(net, length, seed=length), **ZERO_NOISE}
        inputs["sid"] = torch.LongTensor([data["spk2id"][speaker]])
        with torch.no_grad():
            want = ours.infer(**inputs)[0]
            for got in (net.infer(**inputs)[0], bundle.infer(**inputs)[0]):
                assert got.shape == want.shape
                worst = max(worst, (got - want).abs().max().item())
    assert worst == 0.0, worst  # the same weights in the same network: bit-identical audio
    print(f"upstream round trip: max abs difference {worst}")


def test_the_stage_exports_the_checkpoint_evaluate_judged(models, tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "run.json").write_text(json.dumps({"checkpoint": {"uri": models["run"], "step": 3}}))
    assert judged_checkpoint(tmp_path) == models["run"]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"model": {"checkpoint": models["bundle"]}}))
    assert judged_checkpoint(tmp_path) == models["bundle"]
    with pytest.raises(FileNotFoundError, match="run the train and evaluate stages first"):
        judged_checkpoint(tmp_path / "nowhere")


def test_vitsflow_export_writes_both_formats_and_fails_clearly(models, tmp_path, prefect_server, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    out = tmp_path / "cli"
    result = runner.invoke(app, ["export", "--model", models["upstream_ok"], "--out", str(out),
                                 "--formats", "safetensors,upstream", "--params", models["params"]])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed == _summary(out) and printed["upstream"]["written"]
    assert (out / "upstream" / "G_7.pth").is_file() and (out / "model.safetensors").is_file()
    bad = runner.invoke(app, ["export", "--model", models["bundle"], "--out", str(tmp_path / "bad"),
                              "--formats", "upstream", "--params", models["params"]])
    assert bad.exit_code == 2 and "symbol table was extended" in bad.output
    unknown = runner.invoke(app, ["export", "--model", models["bundle"], "--out", str(tmp_path / "bad"),
                                  "--formats", "tflite", "--params", models["params"]])
    assert unknown.exit_code == 2 and "formats: expected some of" in unknown.output


def test_a_hifivc_is_exported_beside_the_voice_as_the_seminars_torchscript_and_removed_without_one(models,
                                                                                                 tmp_path):
    from tasks.inference.convert import load_converter
    from tests.tasks.inference.test_convert import save_vc_bundle

    storage = models["bundle"].split("/runs/")[0]  # the voice's file:// storage
    uri = save_vc_bundle(storage)
    summary = export_model(models["bundle"], tmp_path, models["params"], ["safetensors"], vc=uri)
    assert summary["vc"]["file"] == "hifivc.ts" and summary["vc"]["run_id"] == "vc-random"
    assert summary["vc"]["parity"]["forward_max_abs_diff"] <= 1e-4 and _summary(tmp_path)["vc"] == summary["vc"]
    assert {"hifivc.ts", "hifivc.safetensors", "hifivc.json"} <= {p.name for p in tmp_path.iterdir()}
    assert load_converter(tmp_path).info["checkpoint"] == summary["vc"]["checkpoint"]
    summary = export_model(models["bundle"], tmp_path, models["params"], ["safetensors"])
    assert summary["vc"] is None and not list(tmp_path.glob("hifivc.*"))


def test_a_vocoder_is_exported_beside_the_voice_and_an_export_without_one_removes_it(models, tmp_path):
    from tasks.inference.vocode import load_vocoder

    nvidia = Path(__file__).resolve().parents[2] / "data" / "waveglow_conformance" / "nvidia_checkpoint_small.pt"
    summary = export_model(models["bundle"], tmp_path, models["params"], ["safetensors"], vocoder=str(nvidia))
    assert summary["vocoder"]["folder"] == "waveglow" and summary["vocoder"]["sample_rate"] == 22050
    assert summary["vocoder"]["formats"] == ["onnx", "safetensors", "torchscript"]
    assert _summary(tmp_path)["vocoder"] == summary["vocoder"]
    exported, original = load_vocoder(tmp_path), load_vocoder(nvidia)
    assert not exported.model.has_weight_norm  # NVIDIA's keys after remove_weightnorm
    mel = torch.randn(80, 9, generator=torch.Generator().manual_seed(0)).numpy() - 5.0
    assert abs(exported.vocode(mel, sigma=0.0) - original.vocode(mel, sigma=0.0)).max() <= 1e-5
    summary = export_model(models["bundle"], tmp_path, models["params"], ["safetensors"])
    assert summary["vocoder"] is None and not (tmp_path / "waveglow").exists()

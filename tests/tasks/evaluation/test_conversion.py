"""tasks/evaluation/conversion.py: held-out pairs converted and judged with the project's real
judges (GE2E, DNSMOS, pocketsphinx) and the asr stage's recogniser, a bad pair reported without
stopping the others, and the conversion model's gate. The HiFi-VC and the recogniser are
random-init / 2-step tiny nets: this proves the judging's plumbing, not conversion quality
(benchmarks/bench_vc.py measures that)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tasks.core.config import parse_params
from tasks.evaluation.conversion import (_decide, f0_correlation, judge_conversion, markdown_section, promote_vc,
                                         vc_production_key)
from tasks.evaluation.judges import PhoneRecogniser, phone_error_rate
from tasks.core.storage import storage_from_config
from tests.tasks.inference.test_convert import save_vc_bundle
from tests.tasks.training.test_vc_training import TINY_VC, project  # noqa: F401 (the fixture)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

SPEECH = Path(__file__).resolve().parents[2] / "data" / "speech"
PAIRS = [{"source": str(SPEECH / "en_ljspeech/wavs/LJ001-0002.wav"),
          "reference": str(SPEECH / "zh_aishell3/wavs/SSB00730374.wav"),
          "text": "in being comparatively modern.", "language": "en"},
         {"source": str(SPEECH / "zh_aishell3/wavs/SSB00050112.wav"),
          "reference": str(SPEECH / "ja_commonvoice/wavs/common_voice_ja_38925334_16k.wav"), "name": "zh_to_ja"},
         {"source": str(SPEECH / "en_ljspeech/wavs/missing.wav"), "reference": str(SPEECH / "zh_aishell3/wavs/SSB00730374.wav")}]


def _params(root: Path, **vc):
    data = yaml.safe_load((root / "params.yaml").read_text())
    data["vc"] = {**TINY_VC, "eval": PAIRS, **vc}
    data["eval"] = {**data.get("eval", {}), "samples": 1}
    return parse_params(data)


@pytest.mark.slow
def test_held_out_pairs_are_judged_by_the_real_judges_and_a_missing_file_fails_alone(project):  # noqa: F811
    params = _params(project)
    uri = save_vc_bundle(f"file://{project}/storage")
    result = judge_conversion(params, project, model_ref=uri, out_dir="eval")
    assert result["pairs"] == 2 and len(result["failed"]) == 1
    assert "vc.eval[2].source" in result["failed"][0]["error"] and "missing.wav" in result["failed"][0]["error"]
    first, second = result["rows"]
    for row in result["rows"]:
        assert -1 <= row["sim_reference"] <= 1 and -1 <= row["sim_source"] <= 1 and 0 < row["sim_source_reference"] < 1
        assert row["closer"] == (row["sim_reference"] > row["sim_source"]) and row["mos"] > 0
        assert row["cross_gender"] in (True, False) and row["source_f0_hz"] > 0
    assert first["cross_gender"] is True  # LJ Speech's ~210 Hz against a ~130 Hz speaker
    assert 0 <= first["per"] and 0 <= first["per_source"] and 0 <= first["cer"] and "transcript" in first
    assert "per" not in second and "cer" not in second and second["name"] == "zh_to_ja"  # no transcript given
    assert result["recogniser"]["run_id"].startswith("asr-") and result["model"]["run_id"] == "vc-random"
    assert result["overall"]["count"] == 2 and result["overall"]["win_rate"] in (0.0, 0.5, 1.0)
    written = json.loads((project / "eval/vc.json").read_text())
    assert written["rows"] == json.loads(json.dumps(result["rows"]))
    assert [p.name for p in (project / "eval/samples/vc").glob("*.wav")] == [f"{first['name']}.wav"]
    section = markdown_section(result)
    assert "held-out speakers" in section and "| all pairs | 2 |" in section and "missing.wav" in section


def test_the_recogniser_reads_the_asr_stages_checkpoint_and_is_absent_when_the_stage_is_off(project, tmp_path):  # noqa: F811
    import numpy as np

    params = _params(project)
    recogniser = PhoneRecogniser.load(project, params)
    assert recogniser is not None and recogniser.symbols[0] == "_" and recogniser.info["run_id"].startswith("asr-")
    t = np.arange(16000) / 16000
    phones = recogniser.phones((0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), 16000)
    assert all(p in recogniser.symbols[1:] for p in phones)  # symbols, never the blank
    (tmp_path / "train").mkdir()
    (tmp_path / "train/asr.json").write_text(json.dumps({"enabled": False}))
    assert PhoneRecogniser.load(tmp_path, params) is None and PhoneRecogniser.load(tmp_path / "none", params) is None


def test_phone_error_rate_and_f0_correlation_measure_what_they_say():
    import numpy as np

    assert phone_error_rate(["a", "b", "c", "d"], ["a", "x", "c"]) == 0.5 and phone_error_rate([], ["a"]) is None
    t = np.arange(2 * 24000) / 24000
    f0 = 150 + 40 * np.sin(2 * np.pi * 1.0 * t)
    tone = (0.3 * np.sin(2 * np.pi * np.cumsum(f0) / 24000)).astype(np.float32)
    octave = (0.3 * np.sin(2 * np.pi * np.cumsum(2 * f0) / 24000)).astype(np.float32)
    flipped = (0.3 * np.sin(2 * np.pi * np.cumsum(300 - (f0 - 150)) / 24000)).astype(np.float32)
    assert f0_correlation(tone, octave, 24000) > 0.95  # the same contour an octave up: correlated
    assert f0_correlation(tone, flipped, 24000) < -0.9


def test_the_gate_needs_the_win_rate_then_beats_production_by_margin_and_keeps_per(project):  # noqa: F811
    cfg = _params(project).vc.promotion
    ok, reason = _decide(cfg, {"win_rate": 0.4, "margin": 0.1}, None)
    assert not ok and "win rate 0.40 is below vc.promotion.min_win_rate 0.5" in reason
    ok, reason = _decide(cfg, {"win_rate": 0.8, "margin": 0.1}, None)
    assert ok and "no production conversion model yet" in reason
    prod = {"metrics": {"margin": 0.2, "per": 0.3}}
    assert not _decide(cfg, {"win_rate": 0.8, "margin": 0.1, "per": 0.3}, prod)[0]
    assert not _decide(cfg, {"win_rate": 0.8, "margin": 0.3, "per": 0.4}, prod)[0]  # PER worse by 0.1 > 0.05
    assert _decide(cfg, {"win_rate": 0.8, "margin": 0.3, "per": 0.32}, prod)[0]
    assert not _decide(cfg, {"win_rate": None}, None)[0]


def test_a_promoted_conversion_model_writes_its_pointer_and_is_not_promoted_twice(project):  # noqa: F811
    params = _params(project, promotion={"min_win_rate": 0.0})
    record = {"run_id": "vc-x", "checkpoint": {"uri": "file://storage/runs/vc-x/step_00000004", "step": 4}}
    result = {"overall": {"win_rate": 0.5, "margin": 0.01}, "pairs": 2, "eval_set": "e", "scoring": "s"}
    first = promote_vc(params, project, record, result)
    assert first["promoted"] and first["key"] == vc_production_key(params) and first["key"].endswith("-vc/production.json")
    pointer = json.loads(storage_from_config(params.storage, project).read_bytes(first["key"]))
    assert pointer["checkpoint"]["uri"] == record["checkpoint"]["uri"] and pointer["metrics"]["win_rate"] == 0.5
    again = promote_vc(params, project, record, result)
    assert not again["promoted"] and "already production" in again["reason"]
    storage_from_config(params.storage, project).delete(first["key"])  # the module's other tests start without one


@pytest.mark.slow
def test_evaluate_adds_the_in_domain_per_of_every_language_when_the_asr_stage_is_on(project, train_corpus,  # noqa: F811
                                                                                      tmp_path):
    from tasks.evaluation.evaluate import evaluate
    from tests.tasks.inference.test_synth import build_models

    for rel in ("data/bert", "data/spec"):  # the voice's features beside the asr project's ingest and text
        if not (project / rel).exists():
            (project / rel).symlink_to(train_corpus / rel)
    models = build_models(train_corpus, tmp_path / "voice")
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"run_id": "synth-test", "checkpoint": {"uri": models["bundle"], "step": 3}}))
    params = _params(project)
    params = params.model_copy(update={"eval": params.eval.model_copy(update={
        "max_utterances": 4, "samples": 0, "models": {"asr": None, "mos": None, "speaker": None}})})
    params = parse_params(params.model_dump(mode="json"))
    result = evaluate(params, project, run, tmp_path / "eval", params_path=models["params"], write=False)
    assert result["metrics"]["judges"] == {"per": PhoneRecogniser.load(project, params).describe()}
    assert all(isinstance(r["per"], float) and r["per"] >= 0 for r in result["rows"])
    assert isinstance(result["metrics"]["per"], float) and "PER (in-domain)" in result["markdown"]
    assert len({r["language"] for r in result["rows"]}) >= 2  # not English only, as pocketsphinx is

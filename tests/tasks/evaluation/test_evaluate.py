"""tasks/evaluation/evaluate.py: the evaluate stage on the tiny corpus (tests/train_corpus.py) with a random-weight
checkpoint bundle (tests/tasks/inference/test_synth.build_models) and a run record pointing at it, and the
promotion gate on the storage of params.

Random weights: the tests check that every metric is computed, finite and written where DVC and the
report expect it, not what it says about the voice (the judges on real speech: test_bundled_judges.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tasks.core.config import ConfigError, parse_params
from tasks.evaluation.evaluate import (NOT_COMPUTED_NOTE, evaluate, production_key, promote, read_production,
                                       score_production)
from tests.tasks.inference.test_synth import build_models

pytestmark = pytest.mark.slow  # a whole evaluation with the bundled judges

PROMOTION = {"model_name": "tiny", "min_mcd_improvement_db": 0.5, "max_f0_rmse_regression_cents": 20.0,
             "max_mos_regression": 0.2, "max_cer_regression": 0.05}


@pytest.fixture(scope="module")
def setup(train_corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("evaluate")
    models = build_models(train_corpus, work)
    data = json.loads(Path(models["params"]).read_text(encoding="utf-8"))
    data["eval"] = {"samples": 2, "max_utterances": None, "seed": 5, "promotion": PROMOTION}
    Path(models["params"]).write_text(json.dumps(data), encoding="utf-8")  # what the voice's frontends read
    params = parse_params(data)
    manifest = {"run_id": "synth-test", "checkpoint": {"uri": models["bundle"], "step": 3},
                "metrics": {"val_loss": None}, "lineage": {"git_commit": "0" * 40}}
    manifest_path = work / "train" / "manifest.json"
    manifest_path.parent.mkdir(parents=True)
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    result = evaluate(params, train_corpus, manifest_path, work / "eval", params_path=models["params"])
    return {"params": params, "root": train_corpus, "work": work, "manifest": manifest, "result": result,
            "voice_params": models["params"]}


def test_metrics_json_has_finite_headline_metrics_and_groups(setup):
    out = setup["work"] / "eval"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for key in ("mcd_db", "f0_rmse_cents", "length_ratio", "mel_l1", "vuv_error"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["mcd_db"] > 0 and metrics["length_ratio"] > 0 and metrics["mel_l1"] > 0
    assert metrics["utterances"] == metrics["overall"]["count"] >= 4
    assert set(metrics["language"]) == {"de", "en", "ja", "zh"}  # every language of the corpus has val clips
    per_speaker = metrics["language/speaker"]
    assert {g.split("/")[0] for g in per_speaker} == set(metrics["language"]) and len(per_speaker) >= 4
    assert sum(g["count"] for g in per_speaker.values()) == metrics["utterances"]
    assert sum(g["count"] for g in metrics["language"].values()) == metrics["utterances"]
    assert metrics["model"] == {"run_id": "synth-test", "step": 3, "checkpoint": setup["manifest"]["checkpoint"]["uri"]}
    # the bundled judges are on with no configuration: MOS and speaker similarity for every language...
    assert metrics["judges"] == {"cer": "pocketsphinx", "wer": "pocketsphinx", "mos": "dnsmos",
                                 "mos_reference": "dnsmos", "speaker_similarity": "ge2e"}
    for key in ("mos", "mos_reference", "speaker_similarity"):
        assert all(isinstance(g[key], float) for g in metrics["language"].values()), key
    assert 1.0 <= metrics["mos"] <= 5.0 and 1.0 <= metrics["mos_reference"] <= 5.0
    # ...and CER/WER for English only (pocketsphinx); absent, never faked, for the others
    assert isinstance(metrics["language"]["en"]["cer"], float) and metrics["cer"] == metrics["language"]["en"]["cer"]
    assert all(metrics["language"][lang]["cer"] is None for lang in ("de", "ja", "zh"))


def test_per_utterance_rows_samples_and_report(setup):
    out = setup["work"] / "eval"
    rows = json.loads((out / "plots" / "per_utterance.json").read_text(encoding="utf-8"))
    assert len(rows) == setup["result"]["metrics"]["utterances"]
    assert {"id", "language", "speaker", "mcd_db", "f0_rmse_cents", "length_ratio", "mel_l1"} <= set(rows[0])
    wavs, pngs = sorted((out / "samples").glob("*.wav")), sorted((out / "plots" / "images").glob("*.png"))
    assert len(wavs) == 4 and len(pngs) == 2  # 2 samples: reference + synthesis each, one PNG each
    assert [p.name for p in pngs] == sorted(Path(s["plot"]).name for s in setup["result"]["samples"])
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert all(w.read_bytes()[:4] == b"RIFF" for w in wavs)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report == setup["result"]["markdown"]
    assert "| **overall** |" in report and "| de |" in report and "| en/en_" in report
    assert NOT_COMPUTED_NOTE not in report and "| MOS | MOS (recording) | speaker sim. | CER | WER |" in report
    assert "ASR character error rate (`cer`)" in report and "not computed for de, ja, zh" in report
    assert all(isinstance(r.get("transcript"), str) == (r["language"] == "en") for r in rows)  # the ASR judge: en


def test_promotion_gate(setup):
    params, root, manifest = setup["params"], setup["root"], setup["manifest"]
    metrics = setup["result"]["metrics"]
    storage = Path(params.storage.uri.removeprefix("file://"))
    pointer_file = storage / production_key("tiny")
    assert read_production(params, root) is None

    first = promote(params, root, manifest, metrics)  # no production yet
    assert first["promoted"] and pointer_file.is_file()
    pointer = json.loads(pointer_file.read_text(encoding="utf-8"))
    assert pointer["checkpoint"] == {"uri": manifest["checkpoint"]["uri"], "step": 3}
    assert pointer["metrics"]["mcd_db"] == metrics["mcd_db"] and pointer["lineage"] == manifest["lineage"]
    assert pointer["promoted_at"] and read_production(params, root) == pointer

    def candidate(step: int) -> dict:
        return {**manifest, "checkpoint": {"uri": manifest["checkpoint"]["uri"].replace("step_00000003",
                                                                                         f"step_{step:08d}"),
                                           "step": step}}

    before = pointer_file.read_bytes()
    again = promote(params, root, manifest, metrics)
    assert not again["promoted"] and "already production" in again["reason"]
    worse = promote(params, root, candidate(4), {**metrics, "mcd_db": metrics["mcd_db"] + 1.0})
    assert not worse["promoted"] and "improvement" in worse["reason"] and "below the required 0.5 dB" in worse["reason"]
    slight = promote(params, root, candidate(5), {**metrics, "mcd_db": metrics["mcd_db"] - 0.4})
    assert not slight["promoted"] and "below the required" in slight["reason"]
    pitch = promote(params, root, candidate(6), {**metrics, "mcd_db": metrics["mcd_db"] - 1.0,
                                                 "f0_rmse_cents": metrics["f0_rmse_cents"] + 50.0})
    assert not pitch["promoted"] and "F0 RMSE" in pitch["reason"] and "exceeds the allowed 20 cents" in pitch["reason"]
    assert pointer_file.read_bytes() == before  # refused candidates leave production untouched

    better = promote(params, root, candidate(7), {**metrics, "mcd_db": metrics["mcd_db"] - 0.6,
                                                  "f0_rmse_cents": metrics["f0_rmse_cents"] + 10.0})
    assert better["promoted"], better["reason"]
    now = json.loads(pointer_file.read_text(encoding="utf-8"))
    assert now["checkpoint"]["step"] == 7 and now["previous"]["checkpoint"]["step"] == 3
    assert now["metrics"]["mcd_db"] == pytest.approx(metrics["mcd_db"] - 0.6)
    assert now["metrics"]["mos"] == metrics["mos"] and now["scoring"] == metrics["scoring"]
    assert "same utterances, same scoring" in better["compared"]
    assert not list(pointer_file.parent.glob(".*.tmp"))  # the atomic write left no temporary file

    # MOS and CER gate too, with their margins (0.2 and 0.05 here)
    prod = now["metrics"]
    duller = promote(params, root, candidate(8), {**metrics, "mcd_db": prod["mcd_db"] - 1.0,
                                                  "f0_rmse_cents": prod["f0_rmse_cents"], "mos": prod["mos"] - 0.3})
    assert not duller["promoted"] and "MOS" in duller["reason"] and "exceeds the allowed 0.2" in duller["reason"]
    mumbled = promote(params, root, candidate(9), {**metrics, "mcd_db": prod["mcd_db"] - 1.0,
                                                   "f0_rmse_cents": prod["f0_rmse_cents"], "cer": prod["cer"] + 0.1})
    assert not mumbled["promoted"] and "CER" in mumbled["reason"] and "exceeds the allowed 0.05" in mumbled["reason"]


def test_the_gate_compares_production_on_the_candidates_utterances_scoring_it_again_when_its_record_is_not(setup):
    params, root, manifest = setup["params"], setup["root"], setup["manifest"]
    metrics = setup["result"]["metrics"]
    pointer_file = Path(params.storage.uri.removeprefix("file://")) / production_key("tiny")
    pointer = {"model_name": "tiny", "checkpoint": {"uri": manifest["checkpoint"]["uri"], "step": 3},
               # recorded on other val utterances: better than the candidate by far
               "metrics": {**{k: metrics[k] for k in ("mcd_db", "f0_rmse_cents", "mos", "cer")},
                           "mcd_db": metrics["mcd_db"] - 5.0},
               "eval_set": "another-val-set", "scoring": metrics["scoring"]}
    pointer_file.parent.mkdir(parents=True, exist_ok=True)
    pointer_file.write_text(json.dumps(pointer), encoding="utf-8")
    candidate = {**manifest, "checkpoint": {"uri": manifest["checkpoint"]["uri"] + "-candidate", "step": 11}}
    cand_metrics = {**metrics, "mcd_db": metrics["mcd_db"] - 1.0, "model": {"checkpoint": candidate["checkpoint"]["uri"]}}
    # production's checkpoint is scored on the candidate's utterances, with the same judges and settings
    rescored = score_production(params, root, cand_metrics, setup["work"] / "train" / "manifest.json",
                                params_path=setup["voice_params"])
    assert rescored["eval_set"] == metrics["eval_set"] and rescored["model"]["checkpoint"] == pointer["checkpoint"]["uri"]
    assert rescored["mcd_db"] == pytest.approx(metrics["mcd_db"])  # the same checkpoint as the first evaluation
    decision = promote(params, root, candidate, cand_metrics, production_metrics=rescored)
    assert decision["promoted"], decision["reason"]  # 1 dB better on the same utterances
    assert "re-scored on the candidate's" in decision["compared"] and "re-scored" in decision["reason"]
    # against the record on other utterances it would have lost; the reason says the record was not like with like
    pointer_file.write_text(json.dumps(pointer), encoding="utf-8")
    blind = promote(params, root, candidate, cand_metrics)
    assert not blind["promoted"] and "not like with like" in blind["reason"]
    # a record on the same utterances with the same scoring is used as it is
    assert score_production(params, root, {**cand_metrics, "eval_set": "another-val-set"}) is None
    pointer_file.unlink()


def test_eval_config_is_typed():
    from tasks.core.config import EvalConfig

    assert EvalConfig().max_utterances is None and EvalConfig().promotion.min_mcd_improvement_db == 0.0
    assert EvalConfig().models.mos == "dnsmos" and EvalConfig().f0_method == "pyin"
    with pytest.raises(ConfigError, match=r"eval\.f0_method"):
        parse_params({"datasets": [], "languages": {}, "eval": {"f0_method": "yin"}})
    base = {"datasets": [], "languages": {}}
    with pytest.raises(ConfigError, match=r"eval\.promotion\.min_mcd_improvment_db: .*unknown key"):
        parse_params({**base, "eval": {"promotion": {"min_mcd_improvment_db": 1}}})
    with pytest.raises(ConfigError, match=r"eval\.max_utterances"):
        parse_params({**base, "eval": {"max_utterances": 0}})


def test_random_init_hf_judges_plumbing_adds_asr_mos_and_speaker_metrics_to_metrics_rows_and_report(setup):
    from tests.audio_models import build_audio_models

    work = setup["work"]
    paths = build_audio_models(work / "audio_models")
    data = setup["params"].model_dump(mode="json")
    data["eval"] = {**data["eval"], "max_utterances": 3, "samples": 0, "models": paths}
    result = evaluate(parse_params(data), setup["root"], work / "train" / "manifest.json", work / "eval_judged",
                      params_path=setup["voice_params"])
    metrics = json.loads((work / "eval_judged" / "metrics.json").read_text(encoding="utf-8"))
    judged = {"cer", "wer", "mos", "mos_reference", "speaker_similarity"}
    assert set(metrics["judges"]) == judged and metrics["judges"]["cer"] == paths["asr"]
    for key in judged:  # headline keys (dvc metrics diff) and in every group
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
        assert all(key in g for g in metrics["language"].values())
    rows = json.loads((work / "eval_judged" / "plots" / "per_utterance.json").read_text(encoding="utf-8"))
    assert len(rows) == 3 and all(isinstance(r["transcript"], str) and r["cer"] >= 0 for r in rows)
    assert NOT_COMPUTED_NOTE not in result["markdown"] and f"by `{paths['speaker']}`" in result["markdown"]
    assert result["not_computed"] == {}

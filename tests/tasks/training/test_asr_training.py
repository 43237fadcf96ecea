"""tasks/training/asr.py on the tiny corpus: the CTC loss falls, a stopped run continues exactly as an
uninterrupted one, the features come from the stage cache, the decoding and the phone error rate
are right. A tiny random-init Conformer: these prove the loop, not a usable recogniser."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tasks.core.cache import ResultCache
from tasks.core.checkpoints import CheckpointStore
from tasks.core.config import parse_params
from tasks.core.storage import open_storage
from tasks.prep.content import CACHE_NAME, content_chunk, content_settings, plan_content
from tasks.prep.ingest import read_index
from tasks.training.asr import AsrError, NET, clips, edit_distance, greedy_decode, run_id_for, symbol_table, train

TINY_ASR = {"enabled": True, "device": "cpu", "batch_size": 4, "max_steps": 4, "save_interval": 2, "eval_interval": 2,
            "log_interval": 1, "val_max_utterances": 2, "learning_rate": 2e-3,
            "model": {"d_model": 32, "n_heads": 2, "n_layers": 2, "ff_mult": 2, "conv_kernel": 7, "p_dropout": 0.1}}


def make_project(train_corpus: Path, work: Path, fill: bool = True) -> Path:
    for rel in ("data/ingest", "data/text"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).symlink_to(train_corpus / rel)
    data = yaml.safe_load((train_corpus / "params.yaml").read_text())
    data.update(asr=TINY_ASR, runtime={"cache_dir": ".cache/vitsflow"}, storage={"uri": f"file://{work}/storage"})
    data["train"]["log_dir"] = str(work / "logs")
    (work / "params.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    if fill:  # what the asr stage does before training
        params = parse_params(data)
        items = plan_content(read_index(work / "data/ingest"), params.audio.sample_rate)
        ResultCache(work / ".cache/vitsflow" / f"{CACHE_NAME}.sqlite").put_many(
            content_chunk(items, work / "data/ingest", content_settings(params.audio.sample_rate)))
    return work


def _params(project: Path, **asr):
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["asr"] = {**data["asr"], **asr}
    return parse_params(data)


@pytest.fixture(scope="module")
def project(train_corpus, tmp_path_factory) -> Path:
    return make_project(train_corpus, tmp_path_factory.mktemp("asr"))


def test_targets_are_the_text_stages_phone_ids_without_the_edge_pads(project):
    params = _params(project)
    symbols = symbol_table(project)
    split = clips(project, params, symbols)
    text = {r["id"]: r for shard in sorted((project / "data/text").glob("text-*.jsonl"))
            for r in map(json.loads, shard.read_text(encoding="utf-8").splitlines())}
    row = split["train"][0]
    assert [symbols.symbols[i] for i in row["target"]] == [p for p in text[row["id"]]["phones"] if p != "_"]
    assert 0 not in row["target"] and split["val"]  # 0, the pad, is the CTC blank


@pytest.mark.slow
def test_ctc_training_lowers_the_loss_and_reports_a_phone_error_rate(project, tmp_path):
    params = _params(project, max_steps=40, save_interval=40, eval_interval=40, run_id="asr-learns")
    losses = []
    result = train(params, project, on_step=lambda s: losses.append(s["loss"]))
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    assert result.per is not None and 0 <= result.per <= 1.5 and result.val_loss is not None
    nets, state, manifest = CheckpointStore(open_storage(f"file://{project}/storage"), "asr-learns").load()
    assert set(nets) == {NET} and state["step"] == 40 and manifest["metrics"]["per"] == result.per
    assert state["symbols"]["symbols"] == symbol_table(project).symbols


@pytest.mark.slow
def test_a_stopped_run_continues_with_the_losses_and_weights_of_an_uninterrupted_one(project):
    straight, resumed = [], []
    full = train(_params(project, max_steps=6, run_id="asr-straight"), project,
                 on_step=lambda s: straight.append(s["loss"]))
    first = train(_params(project, max_steps=3, save_interval=3, run_id="asr-stopped"), project,
                  on_step=lambda s: resumed.append(s["loss"]))
    assert first.step == 3
    again = train(_params(project, max_steps=6, run_id="asr-stopped"), project,
                  on_step=lambda s: resumed.append(s["loss"]))
    assert again.step == 6 and resumed == straight
    for (k, p), q in zip(full.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(p, q), k


def test_the_run_id_follows_the_model_and_the_data_not_the_step_budget(project):
    params = _params(project, run_id=None)
    split = clips(project, params, symbol_table(project))
    same = run_id_for(_params(project, run_id=None, max_steps=99, eval_interval=7), split)
    assert run_id_for(params, split) == same and same.startswith("asr-")
    wider = _params(project, run_id=None, model={**TINY_ASR["model"], "d_model": 64})
    assert run_id_for(wider, split) != same
    fewer = {"train": split["train"][1:], "val": split["val"]}
    assert run_id_for(params, fewer) != same
    with pytest.raises(ValueError, match="asr.run_id"):
        _params(project, run_id="../elsewhere")


def test_training_without_the_stages_features_says_to_run_the_stage(train_corpus, tmp_path):
    bare = make_project(train_corpus, tmp_path, fill=False)
    with pytest.raises(AsrError, match=r"have no content features .*run the asr stage"):
        train(_params(bare), bare)


def test_greedy_decoding_merges_repeats_drops_blanks_and_the_distance_is_levenshteins():
    logits = torch.full((8, 5), -10.0)
    for t, c in enumerate([3, 3, 0, 3, 1, 1, 0, 4]):
        logits[t, c] = 0.0
    assert greedy_decode(logits, 8) == [3, 3, 1, 4] and greedy_decode(logits, 2) == [3]
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0 and edit_distance([], [1, 2]) == 2
    assert edit_distance([1, 3, 4], [1, 2, 3]) == 2 and edit_distance([2, 1], [1, 2]) == 2

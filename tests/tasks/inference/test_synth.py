"""tasks/inference/synth.py: text to speech and voice conversion from an export folder or a checkpoint bundle,
with the real frontends and the real MiniLM BERT on the tiny preprocessed corpus (tests/train_corpus.py).

The generator has random weights (training it costs a minute on CPU): the tests check mechanics,
lengths and that training's data path is the one inference takes, not how it sounds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.frontends import backend_info
from tasks.inference.synth import SynthError, Voice, load_voice, parse_batch
from tests.helpers import assert_equal_to_fp16_rounding

SPEAKER = "en_m1"
TEXTS = {"zh": "你吃饭了吗？", "ja": "お元気ですか？", "en": "Where are you going?", "de": "Guten Abend!"}


def build_models(corpus_root: Path, work: Path) -> dict[str, str]:
    """A random-weight generator of the corpus's shapes saved as the trainer saves a checkpoint
    (the state keys tasks.training.train writes) and exported with export_inference. Returns
    {"run": run folder URI, "bundle": step URI, "export": folder, "params": params.yaml}."""
    from tasks.core.checkpoints import CheckpointStore
    from tasks.core.config import resolve_local
    from tasks.training.corpus import Corpus
    from tasks.inference.export import export_inference
    from tasks.prep.spec import stft_settings
    from tasks.core.storage import storage_from_config
    from tasks.training.train import DATA_DIRS, build_nets
    from tests.train_corpus import tiny_params

    params = tiny_params(corpus_root, work)
    corpus = Corpus.open(**{k: resolve_local(corpus_root, v) for k, v in DATA_DIRS.items()})
    torch.manual_seed(0)
    g = build_nets(params, corpus)["G"]
    stft = stft_settings(params)
    state = {"step": 3, "speakers": list(corpus.speakers), "symbols": corpus.symbols.to_json(),
             "frontends": corpus.frontends, "model": params.model.model_dump(mode="json"), "sample_rate": params.audio.sample_rate, "stft": stft}
    run_id = "synth-test"
    store = CheckpointStore(storage_from_config(params.storage, corpus_root), run_id)
    store.save(3, {"G": g.state_dict()}, state, {"val_loss": None}, {})
    params_path = work / "params.yaml"  # the corpus params with this storage
    params_path.write_text(json.dumps(params.model_dump(mode="json")), encoding="utf-8")
    export = work / "export"
    export_inference(g, export, corpus.symbols, params.languages,
                     {c: backend_info(l.g2p)[1] for c, l in params.languages.items()},
                     stft, params.model, {name: i for i, name in enumerate(corpus.speakers)},
                     {"run": run_id, "step": 3}, formats=("safetensors",))
    run = f"file://{work}/storage/runs/{run_id}"
    return {"run": run, "bundle": f"{run}/step_00000003", "export": str(export), "params": str(params_path)}


@pytest.fixture(scope="module")
def models(train_corpus, tmp_path_factory):
    return build_models(train_corpus, tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def exported(models) -> Voice:
    return load_voice(models["export"])


@pytest.fixture(scope="module")
def bundle(models) -> Voice:
    return load_voice(models["bundle"], models["params"])


@pytest.mark.parametrize("language", list(TEXTS))
def test_synthesis_in_every_language_of_the_corpus(exported, language):
    wav, sr = exported.synthesize(TEXTS[language], language, SPEAKER, seed=1)
    n_tokens = int(exported.text_inputs(TEXTS[language], language)["x_lengths"])
    assert sr == 22050 and wav.dtype == np.float32 and wav.ndim == 1
    assert np.isfinite(wav).all() and wav.std() > 1e-5  # not silent
    assert len(wav) % exported.hop_length == 0
    assert n_tokens * exported.hop_length <= len(wav) < 20 * sr  # every token lasts at least one frame


def test_infer_returns_a_monotonic_alignment_covering_every_frame_and_token(bundle):
    s = bundle.infer(TEXTS["en"], "en", "en_m1", seed=2)
    a, n_tokens = s.alignment, int(bundle.text_inputs(TEXTS["en"], "en")["x_lengths"])
    assert a.shape == (len(s.wav) // bundle.hop_length, n_tokens) and len(s.wav) % bundle.hop_length == 0
    assert (a.sum(axis=1) == 1).all()  # each frame reads exactly one token
    assert (np.diff(a.argmax(axis=1)) >= 0).all() and (a.sum(axis=0) >= 1).all()  # in order, none skipped
    wav, _ = bundle.synthesize(TEXTS["en"], "en", "en_m1", seed=2)
    np.testing.assert_array_equal(wav, s.wav)


def test_an_export_and_its_checkpoint_sound_the_same(exported, bundle):
    assert bundle.kind == "checkpoint" and exported.kind == "export"
    assert bundle.speakers == exported.speakers and bundle.symbols == exported.symbols
    a, _ = exported.synthesize(TEXTS["ja"], "ja", "ja_f1", sdp_ratio=0.5, seed=7)
    b, _ = bundle.synthesize(TEXTS["ja"], "ja", "ja_f1", sdp_ratio=0.5, seed=7)
    np.testing.assert_allclose(a, b, atol=1e-5)
    c, _ = bundle.synthesize(TEXTS["ja"], "ja", "ja_f1", length_scale=2.0, noise_scale=0.0, noise_scale_w=0.0)
    assert len(c) > len(b)  # slower


def test_inputs_are_what_training_reads(bundle, train_corpus):
    """Phones/ids from the raw transcript equal the text stage's outs; BERT features the bert stage's
    to float16 rounding (a request's short batch has fewer rows than the stage's shape)."""
    from tasks.prep.bert import read_features
    from tasks.training.corpus import add_blanks
    from tasks.core.shards import read_jsonl

    raw = {r["id"]: r["text"] for r in read_jsonl(train_corpus / "data/ingest/index.jsonl")}
    bert_rows = {r["id"]: r for r in read_jsonl(train_corpus / "data/bert/index.jsonl")}
    seen = set()
    for shard in sorted((train_corpus / "data/text").glob("text-*.jsonl")):
        for row in read_jsonl(shard):
            if row["language"] in seen:
                continue
            seen.add(row["language"])
            inp = bundle.text_inputs(raw[row["id"]], row["language"])
            assert inp["phones"] == row["phones"] and inp["norm_text"] == row["norm_text"]
            ids, tones, _ = bundle.symbols.to_ids(row["phones"], row["tones"], row["language"])
            assert inp["x"][0].tolist() == add_blanks(ids) and inp["tone"][0].tolist() == add_blanks(tones)
            feats = bundle.bert_features(row["language"], row["norm_text"], row["word2ph"])
            assert_equal_to_fp16_rounding(feats, read_features(train_corpus / "data/bert", bert_rows[row["id"]]))
    assert seen == set(TEXTS)


def test_clear_errors(exported):
    with pytest.raises(SynthError, match=r"unknown speaker 'nobody'.*'en_f1', 'en_m1'"):
        exported.synthesize("Hello.", "en", "nobody")
    with pytest.raises(SynthError, match=r"unknown language 'fr'.*'de', 'en', 'ja', 'zh'"):
        exported.synthesize("Bonjour.", "fr", SPEAKER)
    with pytest.raises(SynthError, match="nothing to say: the text is empty"):
        exported.synthesize("   ", "en", SPEAKER)
    with pytest.raises(SynthError, match=r"utterance 2: nothing to say: 'abc' is empty after 'ja' normalisation"):
        exported.synthesize("こんにちは。|abc", "ja", SPEAKER)


def test_voice_conversion_needs_a_checkpoint(bundle, exported):
    wav, sr = bundle.synthesize(TEXTS["en"], "en", "en_m1", seed=3)
    out = bundle.convert(wav, sr, "en_m1", "zh_f1")
    hop = bundle.hop_length
    assert out.dtype == np.float32 and np.isfinite(out).all() and out.std() > 1e-5
    assert len(out) == (len(wav) // hop) * hop
    resampled = bundle.convert(wav[::2].copy(), sr // 2, "en_m1", "zh_f1")  # any input rate: resampled first
    assert abs(len(resampled) - len(out)) <= hop
    with pytest.raises(SynthError, match="export folder"):
        exported.convert(wav, sr, "en_m1", "zh_f1")
    with pytest.raises(SynthError, match="unknown speaker"):
        bundle.convert(wav, sr, "en_m1", "nobody")


def test_model_references(models):
    latest = load_voice(models["run"], models["params"])  # a run folder: its latest bundle
    assert latest.info["run_id"] == "synth-test" and latest.info["step"] == 3
    local = load_voice(models["bundle"].removeprefix("file://"), models["params"])  # a plain path
    assert local.info["step"] == 3
    manifest = Path(models["export"]).parent / "manifest.json"  # what the train stage writes
    manifest.write_text(json.dumps({"checkpoint": {"uri": models["bundle"], "step": 3}}))
    assert load_voice(manifest, models["params"]).kind == "checkpoint"
    with pytest.raises(SynthError, match="no such model"):
        load_voice(Path(models["export"]).parent / "nothing-here")


def test_a_model_trained_with_another_text_frontend_is_refused(models, tmp_path):
    """An export or checkpoint records the frontend versions its phones came from (symbols.json);
    synthesis with other frontends (e.g. the pre-2.3-rules `ja-1`, which wrote ン as N) is refused."""
    import shutil

    from tasks.core.checkpoints import CheckpointStore
    from tasks.core.storage import open_storage

    export = tmp_path / "export"
    shutil.copytree(models["export"], export)
    config = json.loads((export / "config.json").read_text(encoding="utf-8"))
    assert config["frontends"]["ja"] == backend_info("ja")[1]
    config["frontends"]["ja"] = "ja-1"
    (export / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(SynthError, match=r"language 'ja' was trained with text frontend ja-1, this code's 'ja' "
                                         r"frontend is ja-bv2\.3"):
        load_voice(export)

    storage_root, run = models["run"].removeprefix("file://").split("/runs/")
    state = CheckpointStore(open_storage(f"file://{storage_root}", Path(storage_root)), run).load(3)[1]
    assert state["frontends"] == config["frontends"] | {"ja": backend_info("ja")[1]}


def test_parse_batch_reads_three_line_kinds_and_a_bad_line_fails_alone_with_its_number():
    lines = ["# a comment", "en_m1|en|Hello there.", "", "plain line",
             '{"text": "[a]<zh>你好<en>hi", "lang": "mix", "split": true}', '{"text": 3}', "{not json"]
    jobs = parse_batch(lines, "ja", "ja_f1", {"style_weight": 0.3})
    assert [(j["line"], j.get("speaker"), j.get("lang"), j.get("text")) for j in jobs[:3]] == [
        (2, "en_m1", "en", "Hello there."), (4, "ja_f1", "ja", "plain line"), (5, "ja_f1", "mix", "[a]<zh>你好<en>hi")]
    assert jobs[2]["split"] is True and jobs[0]["split"] is False and jobs[0]["style_weight"] == 0.3
    assert jobs[3] == {"line": 6, "error": "'text': 3 is not a string"}
    assert jobs[4]["line"] == 7 and jobs[4]["error"].startswith("not JSON")
    assert parse_batch(lines[:4], None, None)[1] == {
        "line": 4, "error": "plain text needs --lang and --speaker (or write `speaker|lang|text`)"}
    bad_types = ['{"text": "hi", "split": "false"}', '{"text": "hi", "style_weight": "0.5"}', '{"text": 5}']
    assert [j["error"] for j in parse_batch(bad_types, "en", "en_m1")] == [
        "'split': 'false' is not true or false", "'style_weight': '0.5' is not a number", "'text': 5 is not a string"]


QUIET = dict(noise_scale=0.0, noise_scale_w=0.0, sdp_ratio=0.0)


def test_a_page_is_spoken_piece_by_piece_with_its_pauses_and_each_piece_as_if_alone(exported):
    text = "你好。今天天气很好！\n\n我们走吧。"
    ready = []
    wav, sr, pieces = exported.synthesize_long(text, "zh", "zh_f1", 0.3, 1.0, on_piece=lambda i, w: ready.append(i),
                                               **QUIET)
    assert [p["text"] for p in pieces] == ["你好。", "今天天气很好！", "我们走吧。"] and ready == [0, 1, 2]
    alone = [exported.synthesize(p["text"], "zh", "zh_f1", **QUIET)[0] for p in pieces]
    gaps = [int(0.3 * sr), int(0.3 * sr) + int(0.7 * sr), int(0.3 * sr) + int(0.7 * sr)]
    assert len(wav) == sum(len(a) for a in alone) + sum(gaps)
    at = 0
    for a, gap in zip(alone, gaps):  # the page's BERT ran batched: each piece's audio is the same as alone
        np.testing.assert_allclose(wav[at:at + len(a)], a, atol=1e-5)
        assert not wav[at + len(a):at + len(a) + gap].any()
        at += len(a) + gap
    with pytest.raises(SynthError, match=r"piece 2: utterance 1: nothing to say: 'abc'"):
        exported.synthesize_long("こんにちは。abc", "ja", "ja_f1")
    with pytest.raises(SynthError, match="split: mix text carries"):
        exported.synthesize_long("[zh_f1]<zh>你好", "mix", "zh_f1")


def test_mix_and_auto_requests_speak_every_utterance_with_its_speaker(exported):
    s = exported.infer("[zh_f1]<zh>你好。<en>Hello.|[en_m1]<en>Bye.", "mix", None, **QUIET)
    a = exported.synthesize("你好。Hello.", "auto", "zh_f1", **QUIET)[0]
    assert len(s.wav) > len(a) > 0 and s.alignment.shape[0] * exported.hop_length == len(s.wav)
    with pytest.raises(SynthError, match="unknown speaker 'nobody'"):
        exported.infer("[nobody]<en>Hello.", "mix", None)

import numpy as np
import pytest
import torch

from tasks.core.config import load_params
from tasks.core.hf import tokenizer_for
from tasks.prep.bert import (SLOTS, batch_shape, batches, bert_chunk, chunks, encode_batch, phone_features,
                              pick_device, plan_bert, slot_inputs)
from tasks.prep.text import text_one
from tests.helpers import assert_equal_to_fp16_rounding
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SENTENCES = [("en", "Hello, world."), ("en", "The quick brown fox jumps over the lazy dog."),
             ("en", "Is this the train to Leeds?"), ("zh", "你好，世界。"), ("ja", "こんにちは。")]


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="module")
def rows(params):
    out = []
    for i, (language, text) in enumerate(SENTENCES):
        lang = params.languages[language]
        meta = text_one(text, language, lang, tokenizer_for(REPO, lang.bert)).meta
        out.append({"id": f"u{i}", "language": language, **meta})
    return out


def test_features_are_the_configured_layer_expanded_to_phones(params, rows):
    items = plan_bert(rows, params, REPO, "cpu")
    (key, entry), = encode_batch(items[:1], params.languages["en"].bert, params.features.bert, REPO, "cpu")
    feats = np.frombuffer(entry.data, dtype=np.float16).reshape(entry.meta["dim"], entry.meta["n_phones"])
    assert feats.shape == (384, len(rows[0]["phones"])) and key == items[0].key
    lang = params.languages["en"].bert
    enc = tokenizer_for(REPO, lang)(rows[0]["norm_text"], return_tensors="pt")
    from transformers import AutoModel
    from tasks.core.config import resolve_model_path
    full = AutoModel.from_pretrained(resolve_model_path(REPO, lang.model)).eval()  # all 6 layers
    with torch.inference_mode():
        hidden = full(**enc, output_hidden_states=True).hidden_states[-3][0]
    ref = phone_features(hidden, rows[0]["word2ph"]).numpy()
    assert np.abs(feats.astype(np.float32) - ref).max() < 1e-2  # fp16 storage, other batch shape


SAME_SHAPE = ["Hello, world.", "Good night, moon.", "See you, Sam.", "Thanks a lot.",
              "Come in, please.", "Well done, team."]  # 6-7 BERT tokens each: one shape


def _stage(params, **bert):
    return params.model_copy(update={"features": params.features.model_copy(update={
        "bert": params.features.bert.model_copy(update=bert)})})


def _en_rows(params, sentences):
    lang = params.languages["en"]
    return [{"id": f"s{i}", "language": "en", **text_one(t, "en", lang, tokenizer_for(REPO, lang.bert)).meta}
            for i, t in enumerate(sentences)]


@pytest.fixture
def encoder_shapes(params):
    """The input shapes the English encoder is run on, recorded."""
    from tasks.core.hf import encoder_for

    model, _ = encoder_for(REPO, params.languages["en"].bert, "cpu")
    shapes, forward = [], model.forward

    def recording(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    model.forward = recording
    yield shapes
    del model.forward


def test_an_utterance_gets_the_same_bytes_and_batch_shape_whatever_it_is_batched_with(params, encoder_shapes):
    """Alone (a short batch padded with empty rows), with one mate, and in a full batch of other
    sentences: the same input shape each time, so the same bytes on any device, not only where
    the kernels happen not to depend on the row count."""
    p = _stage(params, length_bucket=8, token_budget=32, batch_size=32)  # 4 rows of 8 tokens
    rows = _en_rows(p, SAME_SHAPE)
    items = plan_bert(rows, p, REPO, "cpu")
    assert {batch_shape(i.n_tokens, p.features.bert) for i in items} == {(4, 8)}
    alone = dict(bert_chunk(items[:1], p, REPO, "cpu"))
    pair = dict(bert_chunk(items[:2], p, REPO, "cpu"))
    full = dict(bert_chunk(items[3:] + items[:1], p, REPO, "cpu"))  # its mates all different
    assert alone[items[0].key].data == pair[items[0].key].data == full[items[0].key].data
    assert pair[items[1].key].data != alone[items[0].key].data
    assert set(encoder_shapes) == {(4, 8)} and len(encoder_shapes) == 3


def test_inference_runs_a_short_batch_with_its_own_rows_and_gets_the_stages_features_to_float16_rounding(params):
    """encode_features(min_rows=2), what a synthesis request runs: 2 or 3 rows instead of the shape's
    4, and (only) those rows' features, equal to the stage's full shape's within float16 rounding
    (the row count may change the CPU's GEMM blocking: tests/helpers.assert_equal_to_fp16_rounding)."""
    from tasks.prep.bert import encode_features

    p = _stage(params, length_bucket=8, token_budget=32, batch_size=32)  # 4 rows of 8 tokens
    items = plan_bert(_en_rows(p, SAME_SHAPE), p, REPO, "cpu")
    bert = p.languages["en"].bert
    full = encode_features(items[:4], bert, p.features.bert, REPO, "cpu")
    for n in (1, 2, 3):
        short = encode_features(items[:n], bert, p.features.bert, REPO, "cpu", min_rows=2)
        assert len(short) == n
        for a, b in zip(short, full):
            assert_equal_to_fp16_rounding(a, b)


EXACTLY_8 = ["Good night, dear moon.", "Come right in, please.", "Well done, my team.",
             "Good night, moon now."]  # 8 BERT tokens each: a multiple of the bucket


def test_a_full_batch_of_bucket_length_utterances_is_padded_and_gives_the_bytes_of_one_alone(params):
    """transformers' SDPA attention drops the mask when a batch has no padding at all, a different
    kernel from the masked one (on this CPU the same bits; not on every device); so every row keeps
    at least one pad position and a full batch of utterances exactly a bucket long takes the
    masked path as a short batch does."""
    from tasks.core.hf import encoder_for

    p = _stage(params, length_bucket=8, token_budget=32, batch_size=32)
    rows = _en_rows(p, EXACTLY_8)
    items = plan_bert(rows, p, REPO, "cpu")
    assert {i.n_tokens for i in items} == {8}
    n_rows, length = batch_shape(8, p.features.bert)
    assert len(items) >= n_rows
    model, _ = encoder_for(REPO, p.languages["en"].bert, "cpu")
    masks, forward = [], model.forward
    model.forward = lambda *a, **kw: masks.append(kw["attention_mask"].clone()) or forward(*a, **kw)
    try:
        full = dict(bert_chunk(items[:n_rows], p, REPO, "cpu"))
        alone = {i.key: dict(bert_chunk([i], p, REPO, "cpu"))[i.key] for i in items[:n_rows]}
    finally:
        del model.forward
    assert all(bool((m == 0).any(dim=1).all()) for m in masks) and len(masks) == n_rows + 1
    assert all(alone[i.key].data == full[i.key].data for i in items[:n_rows])


def test_a_row_the_tokenizer_disagrees_with_does_not_change_its_mates_batch_shape(params, encoder_shapes):
    p = _stage(params, length_bucket=8, token_budget=32, batch_size=32)
    rows = _en_rows(p, SAME_SHAPE[:2])
    long = dict(_en_rows(p, ["This sentence has many more words than its word2ph claims it has."])[0], id="bad")
    bad = dict(long, word2ph=rows[0]["word2ph"])  # 7 entries, so the 8-token shape; 15 real tokens
    items = plan_bert(rows + [bad], p, REPO, "cpu")
    alone = dict(bert_chunk(items[:1], p, REPO, "cpu"))
    entries = dict(bert_chunk(items, p, REPO, "cpu"))
    assert "tokenizer gives" in entries[items[2].key].meta["reject"]
    assert entries[items[0].key].data == alone[items[0].key].data
    assert set(encoder_shapes) == {(4, 8)}


def test_batch_shapes_follow_the_token_count_alone(params):
    stage = params.features.bert.model_copy(update={"length_bucket": 8, "token_budget": 256, "batch_size": 16})
    assert [batch_shape(n, stage) for n in (1, 7, 8, 9, 16, 17, 40, 300, 510, 511, 512, 513, 600)] == \
        [(16, 8), (16, 8), (16, 16), (16, 16), (10, 24), (10, 24), (5, 48), (1, 304), (1, 512), (1, 512),
         (1, 512), (1, 513), (1, 600)]  # one pad position, until the 512 positions leave none; past
    # them the utterance's own length, so encode_batch's position limit rejects it
    odd = stage.model_copy(update={"length_bucket": 10})
    assert [batch_shape(n, odd) for n in (9, 10, 505, 510, 512)] == [(16, 10), (12, 20), (1, 510), (1, 512), (1, 512)]


def test_runs_are_cut_into_whole_batches_so_only_the_last_of_each_shape_is_short(params):
    p = _stage(params, length_bucket=8, token_budget=24, batch_size=32, chunk_size=5)  # 3 rows of 8
    sentences = SAME_SHAPE * 2 + ["The quick brown fox jumps over the lazy dog, twice."]
    rows = [dict(r, id=f"r{i}", norm_text=r["norm_text"] + " " * i) for i, r in enumerate(_en_rows(p, sentences))]
    items = plan_bert(rows, p, REPO, "cpu")  # 12 of one shape (keys differ by text), 1 longer
    parts, whole = chunks(items, p.features.bert), batches(items, p.features.bert)
    assert [len(b) for b in whole] == [3, 3, 3, 3, 1]
    chunk_of = {i.key: n for n, c in enumerate(parts) for i in c}
    assert all(len({chunk_of[i.key] for i in b}) == 1 for b in whole)  # no batch cut by a chunk
    assert [len(c) for c in parts] == [3, 3, 3, 4]  # at most chunk_size items
    assert sorted(chunk_of) == sorted(i.key for i in items)


def test_bert_keys_name_the_batch_shape_so_a_policy_change_recomputes_only_what_it_reshapes(params):
    p = _stage(params, length_bucket=8, token_budget=256, batch_size=32)
    rows = _en_rows(p, SAME_SHAPE[:1] + ["The quick brown fox jumps over the lazy dog, twice over."])
    before = [i.key for i in plan_bert(rows, p, REPO, "cpu")]
    smaller = _stage(params, length_bucket=8, token_budget=128, batch_size=32)  # 16 rows at 8, 8 at 16
    after = [i.key for i in plan_bert(rows, smaller, REPO, "cpu")]
    assert [batch_shape(len(r["word2ph"]), s.features.bert) for s in (p, smaller) for r in rows] == \
        [(32, 8), (16, 16), (16, 8), (8, 16)]
    assert before[0] != after[0] and before[1] != after[1]
    wide = _stage(params, length_bucket=8, token_budget=256, batch_size=16)  # only the 8-token shape changes
    assert [a == b.key for a, b in zip(before, plan_bert(rows, wide, REPO, "cpu"))] == [False, True]


def test_an_encoder_is_float32_whatever_its_config_says(tmp_path):
    """transformers 5 follows a config's torch_dtype (ku-nlp's Japanese DeBERTa says float16);
    upstream's transformers 4 ran it in float32, and so do we."""
    import json

    from tasks.core.config import BertConfig
    from tasks.core.hf import encoder_for

    folder = _shrunk_upstream_bert("deberta-v2-large-japanese-char-wwm", tmp_path / "ja")
    from safetensors import safe_open

    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
    model, _ = encoder_for(tmp_path, BertConfig(model=str(folder), layer=-3), "cpu")
    assert {t.dtype for t in model.parameters()} == {torch.float32}


def test_bert_keys_follow_the_model_and_layer_but_not_spectrogram_params(params, rows):
    keys = [i.key for i in plan_bert(rows, params, REPO, "cpu")]
    langs = dict(params.languages)
    langs["en"] = langs["en"].model_copy(update={"bert": langs["en"].bert.model_copy(update={"layer": -2})})
    layer = plan_bert(rows, params.model_copy(update={"languages": langs}), REPO, "cpu")
    changed = [a != b.key for a, b in zip(keys, layer)]
    assert changed == [r["language"] == "en" for r in rows]
    hop = params.model_copy(update={"features": params.features.model_copy(update={
        "spec": params.features.spec.model_copy(update={"hop_length": 128})})})
    assert keys == [i.key for i in plan_bert(rows, hop, REPO, "cpu")]


def test_a_word2ph_that_disagrees_with_the_tokenizer_is_a_reject(params, rows):
    bad = dict(rows[0], word2ph=rows[0]["word2ph"] + [0])
    (_, entry), = bert_chunk(plan_bert([bad], params, REPO, "cpu"), params, REPO, "cpu")
    assert "word2ph has" in entry.meta["reject"]


def test_the_other_language_slots_are_filled_with_zeros():
    feats = np.ones((384, 7), dtype=np.float16)
    inputs = slot_inputs({"dims": {"zh": 384, "ja": 384, "en": 384}}, {"slot": "ja"}, feats)
    assert set(inputs) == set(SLOTS) and inputs["ja"] is feats
    assert not inputs["zh"].any() and not inputs["en"].any() and inputs["en"].shape == (384, 7)


def test_a_long_lived_process_reloads_an_encoder_whose_files_changed(tmp_path, minilm_path):
    """A long-lived process (a Dask worker, `vitsflow serve`) outlives a model replaced under the same path: the loaded
    encoder must follow the files, not the name."""
    import shutil

    from tasks.core.config import BertConfig
    from tasks.core.hf import encoder_for, model_hash

    shutil.copytree(minilm_path, tmp_path / "bert")
    bert = BertConfig(model=str(tmp_path / "bert"), layer=-3)
    first, again = encoder_for(tmp_path, bert, "cpu"), encoder_for(tmp_path, bert, "cpu")
    assert again[0] is first[0]
    before = model_hash(tmp_path, bert)
    (tmp_path / "bert" / "README.md").write_text("retrained\n")
    assert model_hash(tmp_path, bert) != before
    assert encoder_for(tmp_path, bert, "cpu")[0] is not first[0]


UPSTREAM = REPO / "tests" / "data" / "upstream_bv2_23"


def _shrunk_upstream_bert(name: str, out: Path) -> Path:
    """A random-init model of upstream's BERT architecture (its real config.json, 3 layers of
    width 32 instead of 24 of 1024) beside upstream's real tokenizer files: plumbing only."""
    import shutil

    from transformers import AutoConfig, AutoModel

    src = UPSTREAM / "tokenizers" / name
    config = AutoConfig.from_pretrained(str(src))
    config.update({"num_hidden_layers": 3, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2})
    if hasattr(config, "pooler_hidden_size"):
        config.pooler_hidden_size = 32
    if hasattr(config, "attention_head_size"):
        config.attention_head_size = 16
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(out))
    for f in src.iterdir():
        if f.name != "config.json":
            shutil.copy(f, out / f.name)
    return out


@pytest.mark.parametrize("language, name", [("ja", "deberta-v2-large-japanese-char-wwm"),
                                            ("zh", "chinese-roberta-wwm-ext-large")])
def test_bert_stage_with_upstreams_tokenizers_gets_one_feature_per_phone_for_every_gold_sentence_random_init_model(
        params, tmp_path, language, name):
    import json

    model = _shrunk_upstream_bert(name, tmp_path / name)
    langs = dict(params.languages)
    langs[language] = langs[language].model_copy(update={"bert": langs[language].bert.model_copy(
        update={"model": str(model)})})
    p = params.model_copy(update={"languages": langs})
    lang = p.languages[language]
    items = json.loads((UPSTREAM / f"{language}.json").read_text(encoding="utf-8"))["items"]
    rows = []
    for i, item in enumerate(items):
        meta = text_one(item["text"], language, lang, tokenizer_for(REPO, lang.bert)).meta
        assert "reject" not in meta, (item["text"], meta)
        # the text stage's output is upstream's own, word2ph included (from upstream's tokenizer)
        assert [meta[k] for k in ("norm_text", "phones", "tones", "word2ph")] == \
            [item[k] for k in ("norm_text", "phones", "tones", "word2ph")]
        rows.append({"id": f"u{i}", "language": language, **meta})
    entries = dict(bert_chunk(plan_bert(rows, p, REPO, "cpu"), p, REPO, "cpu"))
    metas = [e.meta for e in entries.values()]
    assert len(metas) == len(items) and not [m for m in metas if "reject" in m]
    assert sorted(m["n_phones"] for m in metas) == sorted(len(r["phones"]) for r in rows)
    assert {m["dim"] for m in metas} == {32}


def test_auto_device_on_a_machine_without_gpu_device_nodes_is_the_cpu_without_importing_torch():
    """A bert stage run with nothing to compute must not pay torch's import to learn the device."""
    import subprocess
    import sys

    code = ("import sys; from tasks.prep.bert import _gpu_possible, pick_device; d = pick_device('auto'); "
            "print(d, _gpu_possible(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    device, possible, imported = out.stdout.split()
    if possible == "False":
        assert (device, imported) == ("cpu", "False")
    else:  # a machine with GPU device nodes asks torch
        assert imported == "True" and device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == "cpu" and pick_device("cuda") == "cuda"

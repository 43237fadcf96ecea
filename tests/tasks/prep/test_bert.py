import numpy as np
import pytest
import torch

from tasks.core.config import load_params
from tasks.core.hf import tokenizer_for
from tasks.prep.bert import SLOTS, bert_chunk, encode_batch, phone_features, plan_bert, slot_inputs
from tasks.prep.text import text_one
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


def test_an_utterance_gets_the_same_bytes_whatever_it_is_batched_with(params, rows):
    items = plan_bert(rows, params, REPO, "cpu")
    alone = dict(bert_chunk(items[:1], params, REPO, "cpu"))
    together = dict(bert_chunk(list(reversed(items)), params, REPO, "cpu"))
    assert alone[items[0].key].data == together[items[0].key].data


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

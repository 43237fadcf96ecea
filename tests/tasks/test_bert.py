import numpy as np
import pytest
import torch

from tasks.bert import SLOTS, bert_chunk, encode_batch, phone_features, plan_bert, slot_inputs
from tasks.config import load_params
from tasks.hf import tokenizer_for
from tasks.text import text_one
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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
    (key, entry), = encode_batch(items[:1], params, REPO, "cpu")
    feats = np.frombuffer(entry.data, dtype=np.float16).reshape(entry.meta["dim"], entry.meta["n_phones"])
    assert feats.shape == (384, len(rows[0]["phones"])) and key == items[0].key
    lang = params.languages["en"].bert
    enc = tokenizer_for(REPO, lang)(rows[0]["norm_text"], return_tensors="pt")
    from transformers import AutoModel
    from tasks.config import resolve_model_path
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
    """The daemon (flows/daemon.py) outlives a model replaced under the same path: the loaded
    encoder must follow the files, not the name."""
    import shutil

    from tasks.config import BertConfig
    from tasks.hf import encoder_for, fingerprint

    shutil.copytree(minilm_path, tmp_path / "bert")
    bert = BertConfig(model=str(tmp_path / "bert"), layer=-3)
    first, again = encoder_for(tmp_path, bert, "cpu"), encoder_for(tmp_path, bert, "cpu")
    assert again[0] is first[0]
    before = fingerprint(tmp_path, bert)
    (tmp_path / "bert" / "README.md").write_text("retrained\n")
    assert fingerprint(tmp_path, bert) != before
    assert encoder_for(tmp_path, bert, "cpu")[0] is not first[0]

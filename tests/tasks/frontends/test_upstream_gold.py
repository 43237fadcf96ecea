"""The default frontends against upstream Bert-VITS2 2.3's own output, sentence by sentence.

`tests/data/upstream_bv2_23/{ja,zh,en}.json` hold what upstream v2.3's `text_normalize` + `g2p`
produce (see the NOTICE there). Every sentence must give the same normalised text, phones and
tones, and for ja and zh the same word2ph with upstream's real tokenizers; en's gold word2ph came
from a stand-in tokenizer, so for en only the alignment invariants are checked.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.frontends import g2p, normalize

GOLD = Path(__file__).resolve().parents[2] / "data" / "upstream_bv2_23"
TOKENIZERS = {"zh": "chinese-roberta-wwm-ext-large", "ja": "deberta-v2-large-japanese-char-wwm"}
SIZES = {"zh": 97, "ja": 102, "en": 156}


def _items(lang: str) -> list[dict]:
    return json.loads((GOLD / f"{lang}.json").read_text(encoding="utf-8"))["items"]


@pytest.fixture(scope="module")
def upstream_tokenizer():
    from transformers import AutoTokenizer

    return {lang: AutoTokenizer.from_pretrained(str(GOLD / "tokenizers" / name)) for lang, name in TOKENIZERS.items()}


def _differences(lang: str, tokenizer) -> tuple[int, list[str]]:
    diffs = []
    for item in _items(lang):
        norm = normalize(lang, item["text"])
        result = g2p(lang, norm, tokenizer)
        fields = {"norm_text": norm, "phones": result.phones, "tones": result.tones}
        if lang in TOKENIZERS:
            fields["word2ph"] = result.word2ph
        else:
            assert len(result.word2ph) == len(tokenizer.tokenize(norm)) + 2 and sum(result.word2ph) == len(result.phones)
        wrong = [k for k, v in fields.items() if v != item[k]]
        if wrong:
            diffs.append(f"{item['text']!r}: {wrong}")
    return len(_items(lang)), diffs


@pytest.mark.parametrize("lang", ["zh", "ja"])
def test_every_gold_sentence_matches_upstream_with_upstreams_tokenizer(lang, upstream_tokenizer):
    total, diffs = _differences(lang, upstream_tokenizer[lang])
    assert total == SIZES[lang]  # the whole file was read
    assert diffs == []


def test_every_english_gold_sentence_matches_upstream_phones_and_tones(minilm_tokenizer):
    total, diffs = _differences("en", minilm_tokenizer)
    assert total == SIZES["en"]
    assert diffs == []


def test_word2ph_has_one_entry_per_upstream_token_plus_two(upstream_tokenizer):
    """What the bert stage relies on, with the tokenizers upstream users have."""
    for lang, tokenizer in upstream_tokenizer.items():
        for item in _items(lang):
            result = g2p(lang, item["norm_text"], tokenizer)
            assert len(result.word2ph) == len(tokenizer.tokenize(item["norm_text"])) + 2
            assert sum(result.word2ph) == len(result.phones)

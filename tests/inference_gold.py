"""Tiny random BERTs with the real tokenizers, for the upstream Bert-VITS2 2.3 inference gold.

`build_berts(dest)` writes three folders, "zh", "ja" and "en", each loadable offline with
`transformers.AutoTokenizer.from_pretrained(folder)` and `AutoModel.from_pretrained(folder)`:

- zh: the `chinese-roberta-wwm-ext-large` tokenizer (hfl, Apache-2.0) and a BertModel of its
  architecture (its config.json) cut down to 3 layers and a 256-wide feed-forward.
- ja: the `deberta-v2-large-japanese-char-wwm` tokenizer (ku-nlp, CC-BY-SA-4.0, character level)
  and a DebertaV2Model of its architecture, cut down the same way.
- en: deberta-v3-large's sentencepiece model is not available here, so a stand-in: a word-level
  fast tokenizer (Metaspace pre-tokenizer, punctuation split off as separate tokens, so pieces look
  like deberta-v3's "▁word" / "," pieces) over `data/upstream_bv2_23/inference/en_vocab.txt`,
  with [CLS] ... [SEP] around every text, and a DebertaV2Model of deberta-v3-large's
  architecture, cut down the same way.

Every model keeps hidden size 1024 (upstream hard-codes 1024-wide feature slots), 16 heads and has
3 hidden layers (upstream reads hidden_states[-3]). Weights do not come from torch's RNG: every
tensor of the state dict is drawn from numpy's RandomState seeded by SEED + crc32(name):
N(0, 0.02), LayerNorm weights 1 + N(0, 0.02). The same folders therefore hold the same numbers on
every machine, and the upstream gold in `data/upstream_bv2_23/inference` was computed with them.
"""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TOKENIZERS = HERE / "data" / "upstream_bv2_23" / "tokenizers"
EN_VOCAB = HERE / "data" / "upstream_bv2_23" / "inference" / "en_vocab.txt"

SEED = 20231220
HIDDEN = 1024
LAYERS = 3
HEADS = 16
INTERMEDIATE = 256
EN_SPECIAL = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]

_SOURCES = {
    "zh": "chinese-roberta-wwm-ext-large",
    "ja": "deberta-v2-large-japanese-char-wwm",
    "en": "deberta-v3-large",
}


def _tiny_config(lang: str, vocab_size: int | None = None):
    import transformers

    raw = json.loads((TOKENIZERS / _SOURCES[lang] / "config.json").read_text(encoding="utf-8"))
    for key in ("architectures", "torch_dtype", "dtype", "transformers_version"):
        raw.pop(key, None)
    raw.update(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               intermediate_size=INTERMEDIATE)
    if vocab_size is not None:
        raw["vocab_size"] = vocab_size
    if lang == "zh":
        config = transformers.BertConfig(**{k: v for k, v in raw.items() if k != "model_type"})
        config.architectures = ["BertModel"]
    else:
        raw.pop("attention_head_size", None)  # 1024 / 16 = 64 anyway
        config = transformers.DebertaV2Config(**{k: v for k, v in raw.items() if k != "model_type"})
        config.architectures = ["DebertaV2Model"]
    config.dtype = "float32"
    return config


def _fill_deterministic(model) -> None:
    """Every state-dict tensor from numpy: N(0, 0.02), LayerNorm weights 1 + N(0, 0.02)."""
    import torch
    from torch import nn

    layer_norm_weights = {f"{name}.weight" for name, module in model.named_modules()
                          if isinstance(module, nn.LayerNorm)}
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                continue  # integer buffers (position ids), if a version keeps them here
            rng = np.random.RandomState((SEED + zlib.crc32(name.encode("utf-8"))) % 2**32)
            values = rng.normal(0.0, 0.02, size=tuple(tensor.shape)).astype(np.float32)
            if name in layer_norm_weights:
                values += 1.0
            tensor.copy_(torch.from_numpy(values))


def _save_model(config, folder: Path) -> None:
    import transformers

    cls = transformers.BertModel if isinstance(config, transformers.BertConfig) else transformers.DebertaV2Model
    model = cls(config)  # torch-initialised, then overwritten tensor by tensor
    _fill_deterministic(model)
    model.save_pretrained(folder, safe_serialization=True)
    del model


def en_vocab() -> list[str]:
    words = [w for w in EN_VOCAB.read_text(encoding="utf-8").splitlines() if w]
    return EN_SPECIAL + [w for w in words if w not in EN_SPECIAL]


def en_pre_tokenizer():
    """The stand-in's pre-tokenizer: spaces become "▁" word starts, punctuation its own piece."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])


def en_pieces(text: str) -> list[str]:
    """The pieces the en stand-in tokenizer cuts `text` into (what en_vocab.txt must cover)."""
    return [piece for piece, _ in en_pre_tokenizer().pre_tokenize_str(text)]


def _build_en_tokenizer(folder: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(en_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = en_pre_tokenizer()
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                   model_max_length=512)
    fast.save_pretrained(folder)
    return len(vocab)


def build_berts(dest: Path) -> dict[str, Path]:
    """Write the zh, ja and en tiny BERT folders under `dest`; returns {lang: folder}."""
    dest = Path(dest)
    out: dict[str, Path] = {}
    for lang in ("zh", "ja"):
        folder = dest / lang
        folder.mkdir(parents=True, exist_ok=True)
        for f in (TOKENIZERS / _SOURCES[lang]).iterdir():
            if f.name != "config.json":
                shutil.copy2(f, folder / f.name)
        _save_model(_tiny_config(lang), folder)  # writes config.json + model.safetensors
        out[lang] = folder
    folder = dest / "en"
    folder.mkdir(parents=True, exist_ok=True)
    n_vocab = _build_en_tokenizer(folder)
    _save_model(_tiny_config("en", vocab_size=n_vocab), folder)
    out["en"] = folder
    return out


if __name__ == "__main__":
    import sys
    import time

    t0 = time.perf_counter()
    print(build_berts(Path(sys.argv[1])), f"{time.perf_counter() - t0:.1f} s")

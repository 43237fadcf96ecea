"""Stage `bert`: phone-level BERT features for every utterance, batched, cached, fp16 in shards.

For each language the model named in params (loaded once per process) encodes the normalised
text; the hidden state of the configured layer (upstream: hidden_states[-3]) is expanded from
tokens to phones with word2ph, giving [dim, len(phones)].

torch and transformers are imported only where something is computed: a run whose results all
come from the cache starts in a second.

Determinism: a token's features depend on the shape of the batch it ran in (the GEMM kernels
change with it), so every batch has exactly `features.bert.batch_size` rows and a padded length
set by the length bucket (`features.bert.length_bucket`) of its items. An utterance's features are then a function of its own text alone, so
a resumed or incremental run writes the same bytes as a full one.

Outs: `bert-NNNNN.bin` shards, `index.jsonl` (id, language, slot, dim, n_phones, shard location),
`meta.json` (the slot of each language, dims, fill rule, models), `rejects.jsonl`, `summary.json`.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tasks.core.cache import Entry, ResultCache, cache_key_with
from tasks.core.code import code_hash
from tasks.core.config import BertConfig, BertStageConfig, Params, resolve_local
from tasks.core.hf import encoder_for, model_hash, tokenizer_for
from tasks.core.shards import ShardWriter, read_jsonl, write_jsonl
from tasks.core.storage import atomic_write_bytes
from tasks.prep.datasets import Reject

SLOTS = ("zh", "ja", "en")  # the network's three BERT inputs, as upstream 2.3
FILL = "zeros"  # what the slots of the other languages hold, in training and inference alike


def pick_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


@dataclass(frozen=True)
class BertItem:
    row: dict[str, Any]  # a text-stage row: id, language, norm_text, word2ph, phones
    key: str
    n_tokens: int  # len(word2ph): BERT tokens including [CLS] and [SEP]


def read_text_rows(text_dir: Path) -> Iterable[dict[str, Any]]:
    shards = sorted(Path(text_dir).glob("text-*.jsonl"))
    if not (Path(text_dir) / "symbols.json").is_file():
        raise FileNotFoundError(f"{text_dir}: text stage outs not found; run the text stage first")
    for shard in shards:
        yield from read_jsonl(shard)


def plan_bert(rows: Iterable[dict[str, Any]], params: Params, root: Path, device: str) -> list[BertItem]:
    memo = resolve_local(root, params.runtime.cache_dir)  # model files' hashes are remembered there
    deps = {code: {"model": model_hash(root, lang.bert, memo=memo), "layer": lang.bert.layer}
            for code, lang in params.languages.items()}
    from importlib.metadata import version

    libs = {"torch": version("torch"), "transformers": version("transformers"),
            "device": device, "batch": params.features.bert.batch_size,
            "bucket": params.features.bert.length_bucket}
    keyers = {code: cache_key_with(code=code_hash(__name__), libs=libs, **d) for code, d in deps.items()}
    items = []
    for row in rows:
        key = keyers[row["language"]](text=row["norm_text"], word2ph=row["word2ph"])
        items.append(BertItem({k: row[k] for k in ("id", "language", "norm_text", "word2ph")}, key,
                              len(row["word2ph"])))
    return items


def batch_order(items: list[BertItem], bucket: int) -> list[BertItem]:
    """Items grouped by language and length bucket, so that chunks of them make full batches."""
    return sorted(items, key=lambda i: (i.row["language"], -(-i.n_tokens // bucket), i.key))


def phone_features(hidden, word2ph: list[int]):
    """hidden: [n_tokens, dim] -> [dim, sum(word2ph)]: each token's vector repeated per phone."""
    import torch

    return hidden.repeat_interleave(torch.tensor(word2ph, device=hidden.device), dim=0).T


def encode_batch(items: list[BertItem], bert: BertConfig, stage: BertStageConfig, root: Path,
                 device: str) -> list[tuple[str, Entry]]:
    """One full-shape batch of one language's BERT (`bert`) and one length bucket -> cache entries."""
    import torch

    tokenizer, (model, index) = tokenizer_for(root, bert), encoder_for(root, bert, device)
    size, bucket = stage.batch_size, stage.length_bucket
    padded_len = -(-max(i.n_tokens for i in items) // bucket) * bucket
    limit = getattr(model.config, "max_position_embeddings", 512)
    texts = [i.row["norm_text"] for i in items] + [""] * (size - len(items))  # fixed shape: see module doc
    enc = tokenizer(texts, padding="max_length", max_length=max(padded_len, 8), truncation=False,
                    return_tensors="pt").to(device)
    if enc["input_ids"].shape[1] > limit:
        return [(i.key, Entry({"reject": f"{i.n_tokens} BERT tokens exceed the model's {limit}"}, b""))
                for i in items]
    with torch.inference_mode():
        hidden = model(**enc, output_hidden_states=True).hidden_states[index]  # [B, L, dim]
    out = []
    for row, item in enumerate(items):
        n = int(enc["attention_mask"][row].sum())
        if n != item.n_tokens:
            reason = f"tokenizer gives {n} tokens but word2ph has {item.n_tokens} entries"
            out.append((item.key, Entry({"reject": reason}, b"")))
            continue
        feats = phone_features(hidden[row, :n].float(), item.row["word2ph"]).to(torch.float16).cpu()
        out.append((item.key, Entry({"dim": feats.shape[0], "n_phones": feats.shape[1]},
                                    feats.contiguous().numpy().tobytes())))
    return out


def bert_chunk(items: list[BertItem], params: Params, root: Path, device: str) -> list[tuple[str, Entry]]:
    groups: dict[tuple, list[BertItem]] = defaultdict(list)
    for item in items:
        groups[(item.row["language"], -(-item.n_tokens // params.features.bert.length_bucket))].append(item)
    out = []
    size = params.features.bert.batch_size
    for group in groups.values():
        for start in range(0, len(group), size):
            out += encode_batch(group[start:start + size], params.languages[group[0].row["language"]].bert,
                                params.features.bert, root, device)
    return out


def slot_of(params: Params, language: str) -> str:
    return params.languages[language].bert.slot or language


def assemble(items: list[BertItem], cache: ResultCache, out_dir: Path, params: Params, root: Path) -> dict[str, Any]:
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rows, rejects, dims = [], [], {}
    memo = resolve_local(root, params.runtime.cache_dir)  # model files' hashes, as plan_bert remembered them
    with ShardWriter(tmp, "bert", ".bin", params.features.bert.shard_mb * 2**20, reuse_from=out_dir,
                     content_names=True) as shards:
        for item, (key, meta, nbytes) in zip(items, cache.iter_sizes(i.key for i in items)):
            row = item.row
            if "reject" in meta:
                rejects.append(Reject(row["id"], meta["reject"], row["id"], "bert"))
                continue
            slot = slot_of(params, row["language"])
            dims.setdefault(slot, meta["dim"])
            loc = shards.append_cached(nbytes, row["id"], key, partial(cache.payload, key))
            rows.append({"id": row["id"], "language": row["language"], "slot": slot, "dim": meta["dim"],
                         "n_phones": meta["n_phones"], **loc})
    write_jsonl(tmp / "index.jsonl", rows)
    write_jsonl(tmp / "rejects.jsonl", (r.to_json() for r in rejects))
    meta = {"dtype": "float16", "layout": "[dim, n_phones] row-major", "fill": FILL, "slots": list(SLOTS),
            "dims": {slot: dims.get(slot) for slot in SLOTS},
            "languages": {code: {"slot": slot_of(params, code), "model": lang.bert.model,
                                 "revision": lang.bert.revision, "layer": lang.bert.layer,
                                 "fingerprint": model_hash(root, lang.bert, memo=memo)}
                          for code, lang in params.languages.items()}}
    atomic_write_bytes(tmp / "meta.json", json.dumps(meta, indent=2, sort_keys=True).encode())
    summary = {"utterances": len(rows), "rejects": len(rejects),
               "by_language": dict(sorted(Counter(r["language"] for r in rows).items())),
               "shards": len(shards.names)}
    atomic_write_bytes(tmp / "summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return summary


def read_features(bert_dir: Path, row: dict[str, Any]) -> np.ndarray:
    """One utterance's [dim, n_phones] float16 features."""
    from tasks.core.shards import read_record

    return np.frombuffer(read_record(bert_dir, row), dtype=np.float16).reshape(row["dim"], row["n_phones"])


def slot_inputs(bert_dir_meta: dict[str, Any], row: dict[str, Any], feats: np.ndarray) -> dict[str, np.ndarray]:
    """The three BERT inputs of the network for one utterance: its slot gets `feats`, the others
    the fill (zeros of their slot's dim) — the same rule in training and inference."""
    out = {}
    for slot in SLOTS:
        dim = bert_dir_meta["dims"].get(slot) or feats.shape[0]
        out[slot] = feats if slot == row["slot"] else np.zeros((dim, feats.shape[1]), dtype=np.float16)
    return out

"""Stage `bert`: phone-level BERT features for every utterance, batched, cached, fp16 in shards.

For each language the model named in params (loaded once per process) encodes the normalised
text; the hidden state of the configured layer (upstream: hidden_states[-3]) is expanded from
tokens to phones with word2ph, giving [dim, len(phones)].

torch and transformers are imported only where something is computed: a run whose results all
come from the cache starts in a second.

Determinism: a token's features depend on the shape of the batch it ran in (the GEMM kernels
change with it), so the shape is a function of the utterance's own token count (`batch_shape`):
its length plus one pad position rounded up to `features.bert.length_bucket` (capped at the
512 positions of the models), and as many rows as fit
`features.bert.token_budget` tokens (at most `batch_size`); short batches are padded with empty
rows. An utterance's features are then a function of its own text alone, so a resumed or
incremental run writes the same bytes as a full one; the shape is part of its cache key.

Padding is the price of that, so batches are formed across everything a run computes (`chunks`):
sorted by language and shape, cut into whole batches, so only the last batch of each shape is short.
Profile and measurements: benchmarks/bench_features.py.

Outs: `bert-NNNNN.bin` shards, `index.jsonl` (id, language, slot, dim, n_phones, shard location),
`meta.json` (the slot of each language, dims, fill rule, models), `rejects.jsonl`, `summary.json`.
"""
from __future__ import annotations

import json
import shutil
import sys
import threading
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


# Device nodes one of which a GPU torch could use needs (NVIDIA, ROCm, WSL2's CUDA): with none of
# them, "auto" is the CPU without importing torch (1.5-2.5 s of a stage run that has nothing to compute).
# NVIDIA's driver, Jetson's (nvhost, nvmap), AMD's ROCm (kfd), WSL's (dxg)
_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/nvhost-ctrl", "/dev/nvmap",
              "/dev/kfd", "/dev/dxg")


def _gpu_possible() -> bool:
    if sys.platform == "darwin":
        return False  # no CUDA build of torch exists for macOS
    if sys.platform.startswith("linux"):
        return any(Path(node).exists() for node in _GPU_NODES)
    return True  # elsewhere: ask torch


def pick_device(setting: str) -> str:
    if setting != "auto":
        return setting
    if not _gpu_possible():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


BATCH_POLICY = ("batch_size", "length_bucket", "token_budget")  # the features.bert keys batch_shape reads
MIN_LENGTH = 8  # the shortest padded length: [CLS] and [SEP] around a few characters
MAX_POSITIONS = 512  # every BERT upstream uses (and the demo's) has 512 positions


def batch_shape(n_tokens: int, stage: BertStageConfig) -> tuple[int, int]:
    """(rows, padded length) of the batch an utterance of `n_tokens` BERT tokens runs in: a function
    of its own length alone, so its features do not depend on its batch mates (module doc).

    The length leaves at least one pad position: transformers' SDPA attention drops the mask when
    a batch has no padding at all and runs another kernel, so a full batch of utterances exactly
    a bucket long would get other bits than the same utterance in a short batch. Below
    MAX_POSITIONS tokens the length is capped there, so an odd bucket cannot reject a 510-token
    utterance; from MAX_POSITIONS on the batch is that one utterance at its own length (no pad
    fits), whatever the bucket: 512 tokens run, and encode_batch rejects more (RoBERTa's 514
    positions start at 2, so 512 is what every model here takes)."""
    bucket = stage.length_bucket
    if n_tokens >= MAX_POSITIONS:
        return 1, n_tokens
    length = min(max(-(-(n_tokens + 1) // bucket) * bucket, MIN_LENGTH), MAX_POSITIONS)
    rows = 1 if length <= n_tokens else max(1, min(stage.batch_size, stage.token_budget // length))
    return rows, length


def plan_bert(rows: Iterable[dict[str, Any]], params: Params, root: Path, device: str) -> list[BertItem]:
    memo = resolve_local(root, params.runtime.cache_dir)  # model files' hashes are remembered there
    deps = {code: {"model": model_hash(root, lang.bert, memo=memo), "layer": lang.bert.layer}
            for code, lang in params.languages.items()}
    from importlib.metadata import version

    libs = {"torch": version("torch"), "transformers": version("transformers"), "device": device}
    keyers = {code: cache_key_with(code=code_hash(__name__), libs=libs, **d) for code, d in deps.items()}
    items = []
    for row in rows:
        n_tokens = len(row["word2ph"])
        key = keyers[row["language"]](text=row["norm_text"], word2ph=row["word2ph"],
                                      shape=list(batch_shape(n_tokens, params.features.bert)))
        items.append(BertItem({k: row[k] for k in ("id", "language", "norm_text", "word2ph")}, key, n_tokens))
    return items


def batches(items: Iterable[BertItem], stage: BertStageConfig) -> list[list[BertItem]]:
    """The items in batches of one language and one shape, each full but the last of its shape."""
    groups: dict[tuple, list[BertItem]] = defaultdict(list)
    for item in items:
        groups[(item.row["language"], batch_shape(item.n_tokens, stage))].append(item)
    out = []
    for (_, (rows, _)), group in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1][1])):  # language, length
        group.sort(key=lambda i: i.key)
        out += [group[s:s + rows] for s in range(0, len(group), rows)]
    return out


def chunks(items: Iterable[BertItem], stage: BertStageConfig) -> list[list[BertItem]]:
    """Whole batches (`batches`) packed into chunks of at most `chunk_size` items (or one batch):
    a batch is never cut by a chunk boundary, so a run pads only the last batch of each shape."""
    out: list[list[BertItem]] = []
    for batch in batches(items, stage):
        if out and len(out[-1]) + len(batch) <= stage.chunk_size:
            out[-1] += batch
        else:
            out.append(list(batch))
    return out


def phone_features(hidden, word2ph: list[int]):
    """hidden: [n_tokens, dim] -> [dim, sum(word2ph)]: each token's vector repeated per phone."""
    import torch

    return hidden.repeat_interleave(torch.tensor(word2ph, device=hidden.device), dim=0).T


_forward = threading.Lock()  # one forward at a time: each already uses every core (torch's threads)


def _tokenize(tokenizer, texts: list[str], length: int):
    """Lists, not tensors: a text longer than `length` must not make the batch ragged (or wider)."""
    return tokenizer(texts, padding="max_length", max_length=length, truncation=False, padding_side="right")


def encode_features(items: list[BertItem], bert: BertConfig, stage: BertStageConfig, root: Path,
                    device: str, min_rows: int | None = None) -> list["torch.Tensor | str"]:
    """One batch of one language's BERT (`bert`), all of one `batch_shape` -> per item its float32
    phone-level features [dim, sum(word2ph)] (on the CPU) or the reason it has none.

    `min_rows` (inference): a short batch runs with max(min_rows, its items) rows instead of the
    shape's, filled with empty rows as the stage fills them. Its features equal the stage's to
    float16 rounding, not always bit for bit: the row count can change the CPU's GEMM blocking.
    Measured on an AVX-512 EPYC (2026-12-07, upstream-size models, 40 sentences each): 2..5 rows
    the same bits as the full shape for BERT and DeBERTa, one row 440 of 2.2 M fp16 values one step
    off for DeBERTa, hence 2; on an Intel Xeon (2026-12-08, the test models) 1-3 rows put 0.3-0.8%
    of the values one fp16 step (or <= 1.3e-6) off, 4 or more none. tests/tasks/prep/test_bert.py."""
    import torch

    tokenizer, (model, index) = tokenizer_for(root, bert), encoder_for(root, bert, device)
    (rows, length), = {batch_shape(i.n_tokens, stage) for i in items}
    if min_rows is not None:
        rows = min(rows, max(min_rows, len(items)))
    limit = min(getattr(model.config, "max_position_embeddings", MAX_POSITIONS), MAX_POSITIONS)
    if length > limit:
        return [f"{i.n_tokens} BERT tokens exceed the model's {limit}" for i in items]
    texts = [i.row["norm_text"] for i in items] + [""] * (rows - len(items))  # fixed shape: see module doc
    enc = _tokenize(tokenizer, texts, length)
    rejects = {}
    for row, item in enumerate(items):
        n = sum(enc["attention_mask"][row])
        if n != item.n_tokens:  # its row becomes an empty one, so the shape stays its mates'
            rejects[row] = f"tokenizer gives {n} tokens but word2ph has {item.n_tokens} entries"
            texts[row] = ""
    if rejects:
        enc = _tokenize(tokenizer, texts, length)
    enc = enc.convert_to_tensors("pt").to(device)
    with _forward, torch.inference_mode():
        hidden = model(**enc, output_hidden_states=True).hidden_states[index]  # [rows, length, dim]
    return [rejects[row] if row in rejects else
            phone_features(hidden[row, :item.n_tokens].float(), item.row["word2ph"]).cpu()
            for row, item in enumerate(items)]


def encode_batch(items: list[BertItem], bert: BertConfig, stage: BertStageConfig, root: Path,
                 device: str) -> list[tuple[str, Entry]]:
    """`encode_features` as cache entries: float16 [dim, n_phones] bytes, or the reject."""
    import torch

    out = []
    for item, feats in zip(items, encode_features(items, bert, stage, root, device)):
        if isinstance(feats, str):
            out.append((item.key, Entry({"reject": feats}, b"")))
            continue
        feats = feats.to(torch.float16)
        out.append((item.key, Entry({"dim": feats.shape[0], "n_phones": feats.shape[1]},
                                    feats.contiguous().numpy().tobytes())))
    return out


def bert_chunk(items: list[BertItem], params: Params, root: Path, device: str) -> list[tuple[str, Entry]]:
    """A chunk's batches (a chunk from `chunks` is whole batches, so these are the same ones)."""
    out = []
    for batch in batches(items, params.features.bert):
        out += encode_batch(batch, params.languages[batch[0].row["language"]].bert, params.features.bert,
                            root, device)
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

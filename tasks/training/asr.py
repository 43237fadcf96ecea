"""The ASR trainer: HiFi-VC's content encoder (a Conformer, model/hifivc.py ContentEncoder) with a
CTC head, trained on the corpus's phones, one loop top to bottom.

    python -m tasks.training.asr --params params.yaml                          # one process
    torchrun --nproc_per_node 2 -m tasks.training.asr --params params.yaml     # DDP

(`vitsflow asr`, the DVC stage `asr`, runs one of the two as params.asr.nproc says.)

The inputs are the ingested clips' 16 kHz log-mels (tasks/prep/content.py, cached by content); the
targets their phones from the text stage, as ids of its symbol table (symbols.json: the id is the
CTC class, 0, the table's pad `_`, is the blank; the `_` at a sentence's edges are left out of the
targets, tones too). A step: a batch of whole clips (padded, masked by length), CTC loss
(mean over the batch of the per-clip loss divided by its target length, as F.ctc_loss's 'mean'),
AdamW, gradients clipped to asr.grad_clip. bf16 autocast on CUDA when asr.precision says so.

The order of clips (tasks/training/order.py), dropout's RNG and the optimizer are in every
checkpoint, so a resumed run continues with exactly the losses an uninterrupted one has (on the
CPU, as tested; CUDA's CTC backward is not bit-deterministic). The run
id hashes the asr params (minus how-only knobs), the clips' audio and split and their phones.
Validation: the CTC loss on the first `val_max_utterances` val clips and their phone error rate
(greedy decoding: the best class per frame, repeats merged, blanks dropped; Levenshtein distance
over the reference's length), by which `val_loss` the best `keep_best` bundles are kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from model.hifivc import CONTENT_RATE, ContentEncoder
from tasks.core import paths
from tasks.core.cache import ResultCache
from tasks.core.checkpoints import CheckpointStore, all_rng_states, lineage, set_rng_state
from tasks.core.config import AsrConfig, Params, resolve_local
from tasks.core.shards import read_jsonl
from tasks.core.storage import storage_from_config
from tasks.frontends.symbols import PAD, SymbolTable
from tasks.prep.content import CACHE_NAME, content_settings, plan_content, read_mel
from tasks.prep.clips import rejected as clip_rejects
from tasks.prep.ingest import read_index
from tasks.training.launch import setup_distributed
from tasks.training.order import Order

logger = logging.getLogger("vitsflow.asr")

NET = "ContentEncoder"  # the bundle's network name
BLANK = 0  # the CTC blank: the symbol table's pad `_` (its first symbol), which no target holds
TEXT_SAMPLES = 2  # val clips whose recognised phones go to TensorBoard at each validation
HOW_ONLY = {"enabled", "max_steps", "epochs", "log_interval", "eval_interval", "save_interval", "keep_best",
            "val_max_utterances", "nproc", "device", "run_id"}


class AsrError(ValueError):
    """The ASR cannot train; the message says which file or setting and why."""


# ----------------------------------------------------------------------------- data


def symbol_table(root: Path) -> SymbolTable:
    path = resolve_local(root, paths.TEXT) / "symbols.json"
    if not path.is_file():
        raise AsrError(f"{path}: the text stage's symbol table is missing; run the text stage first")
    table = SymbolTable.from_json(json.loads(path.read_text(encoding="utf-8")))
    if table.symbols[:1] != [PAD]:
        raise AsrError(f"{path}: the first symbol is {table.symbols[:1]}, not the pad {PAD!r} the CTC blank is")
    return table


def clips(root: Path, params: Params, symbols: SymbolTable) -> dict[str, list[dict[str, Any]]]:
    """The clips that have phones and features (not a stage reject: tasks.prep.clips.short_clip),
    by split: ingest row + `key` (their features) + `target` (ids)."""
    text_dir = resolve_local(root, paths.TEXT)
    phones = {r["id"]: r["phones"] for shard in sorted(text_dir.glob("text-*.jsonl")) for r in read_jsonl(shard)}
    rows = [r for r in read_index(resolve_local(root, paths.INGEST)) if r["id"] in phones]
    index = {s: i for i, s in enumerate(symbols.symbols)}  # the text stage wrote every phone into it
    items = plan_content(rows, params.audio.sample_rate)
    rejected = clip_rejects(ResultCache(resolve_local(root, params.runtime.cache_dir) / f"{CACHE_NAME}.sqlite"),
                            (i.key for i in items))
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for item in (i for i in items if i.key not in rejected):
        target = [index[p] for p in phones[item.row["id"]] if p != PAD]
        out.setdefault(item.row["split"], []).append({**item.row, "key": item.key, "target": target})
    return out


def run_id_for(params: Params, split: dict[str, list[dict[str, Any]]]) -> str:
    """The run these params and clips define: the asr params minus how-only knobs, the mel's
    settings, each clip's audio (ingest's sha256), split and phone ids (not the feature keys, which
    also hash code and library versions: an edit there would start a new run instead of resuming
    this one)."""
    a = params.asr
    if a.run_id:
        return a.run_id
    clip_hash = hashlib.sha256("\n".join(f"{r['split']}:{r['sha256']}:{r['target']}" for s in ("train", "val")
                                         for r in split.get(s, [])).encode()).hexdigest()
    what = {"asr": a.model_dump(mode="json", exclude=HOW_ONLY), "features": content_settings(params.audio.sample_rate),
            "clips": clip_hash}
    return "asr-" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def collate(cache: ResultCache, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Whole clips, zero-padded: mel [B, 80, F], mel_lengths [B], targets (concatenated), target_lengths [B]."""
    mels = [read_mel(cache, r["key"]) for r in rows]
    frames = max(m.shape[1] for m in mels)
    mel = torch.zeros(len(rows), mels[0].shape[0], frames)
    for i, m in enumerate(mels):
        mel[i, :, :m.shape[1]] = torch.from_numpy(m.copy())
    return {"mel": mel, "mel_lengths": torch.tensor([m.shape[1] for m in mels]),
            "targets": torch.tensor([t for r in rows for t in r["target"]], dtype=torch.long),
            "target_lengths": torch.tensor([len(r["target"]) for r in rows])}


# ----------------------------------------------------------------------------- model, loss, decoding


def build_model(a: AsrConfig, n_classes: int) -> ContentEncoder:
    """The encoder with a head of `n_classes` outputs (the symbol table's size; class 0 is the blank)."""
    return ContentEncoder(n_symbols=n_classes - 1, **a.model.model_dump())


def ctc_logits(net: torch.nn.Module, model: ContentEncoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, Tc, C]. `net` is the model or its DDP wrapper (whose forward runs the gradient hooks);
    the head is the model's."""
    return model.ctc_logits(net(batch["mel"], batch["mel_lengths"]))


def ctc_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    lengths = ContentEncoder.output_lengths(batch["mel_lengths"])
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # [Tc, B, C]
    return F.ctc_loss(log_probs, batch["targets"], lengths, batch["target_lengths"], blank=BLANK,
                      zero_infinity=True)


def greedy_decode(logits: torch.Tensor, length: int) -> list[int]:
    """The best class per frame [Tc, C] over the first `length` frames, repeats merged, blanks dropped."""
    best = logits[:length].argmax(-1).tolist()
    return [c for i, c in enumerate(best) if c != BLANK and (i == 0 or c != best[i - 1])]


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions each 1)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@torch.no_grad()
def validate(model: ContentEncoder, cache: ResultCache, rows: list[dict[str, Any]],
             device: torch.device, examples: Optional[list] = None) -> tuple[Optional[float], Optional[float]]:
    """(mean CTC loss, phone error rate) over `rows`, one clip at a time; (None, None) without clips.
    `examples`: a list to append the first clips' (id, target ids, recognised ids) to (TensorBoard)."""
    if not rows:
        return None, None
    was = model.training
    model.eval()
    total, errors, ref_len = 0.0, 0, 0
    for row in rows:
        batch = {k: v.to(device) for k, v in collate(cache, [row]).items()}
        logits = ctc_logits(model, model, batch)
        total += float(ctc_loss(logits, batch))
        hyp = greedy_decode(logits[0], int(ContentEncoder.output_lengths(batch["mel_lengths"])[0]))
        if examples is not None and len(examples) < TEXT_SAMPLES:
            examples.append((row["id"], row["target"], hyp))
        errors, ref_len = errors + edit_distance(hyp, row["target"]), ref_len + len(row["target"])
    model.train(was)
    return total / len(rows), errors / max(ref_len, 1)


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    run_id: str
    step: int
    epoch: int
    manifest: Optional[dict]
    val_loss: Optional[float]
    per: Optional[float]
    model: ContentEncoder


def train(params: Params, root: Path, on_step: Optional[Callable[[dict], None]] = None) -> TrainResult:
    """Train (or resume) the ASR run these params and clips define, until asr.max_steps."""
    a, root = params.asr, Path(root)
    rank, world, local_rank, device = setup_distributed(a.device)
    symbols = symbol_table(root)
    split = clips(root, params, symbols)
    run_id = run_id_for(params, split)
    cache = ResultCache(resolve_local(root, params.runtime.cache_dir) / f"{CACHE_NAME}.sqlite")
    missing = cache.missing(r["key"] for s in split.values() for r in s)
    if missing:
        raise AsrError(f"{len(missing)} clips have no content features in {cache.path}: run the asr stage "
                       "(vitsflow asr), which computes them before training")
    train_rows, val_rows = split["train"], split["val"][: a.val_max_utterances]
    if len(train_rows) < a.batch_size * world:
        raise AsrError(f"{len(train_rows)} training clips with phones cannot fill one batch of asr.batch_size "
                       f"{a.batch_size} on {world} processes (clips too short for the features are left out: "
                       "params audio.min_seconds)")
    order = Order(len(train_rows), a.batch_size, a.seed, rank, world)

    torch.manual_seed(a.seed)
    model = build_model(a, len(symbols.symbols)).to(device)  # the same initial weights on every rank
    torch.manual_seed(a.seed + rank)  # and each rank its own dropout masks
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.learning_rate, betas=(0.9, 0.98), weight_decay=1e-3)
    store = CheckpointStore(storage_from_config(params.storage, root), run_id)
    resuming = store.latest() is not None
    step, val_loss, per, manifest = 0, None, None, None
    if resuming:
        nets, state, manifest = store.load()
        model.load_state_dict(nets[NET], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        order.load_state_dict(state["order"])
        step, val_loss, per = int(state["step"]), state.get("val_loss"), state.get("per")
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])
        else:
            logger.warning("run %s was saved by %d processes, resumed by %d: not an exact resume",
                           run_id, len(state["rng"]), world)
        logger.info("resumed run %s at step %d (epoch %d, batch %d)", run_id, step, order.epoch, order.position)
    else:
        logger.info("new run %s: %d train clips, %d val clips, %d classes, %s", run_id, len(train_rows),
                    len(val_rows), len(symbols.symbols), device)
    net = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None) if world > 1 else model
    use_bf16 = a.precision == "bf16" and device.type == "cuda"
    if a.precision == "bf16" and not use_bf16:
        logger.warning("asr.precision bf16 applies on CUDA only: training in fp32 on %s", device)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(resolve_local(root, params.train.log_dir) / run_id))
    run_lineage = lineage(root)

    def save() -> Optional[dict]:
        rngs = all_rng_states(world)
        if rank != 0:
            return None
        state = {"step": step, "order": order.state_dict(), "optimizer": optimizer.state_dict(), "rng": rngs,
                 "world_size": world, "val_loss": val_loss, "per": per, "model_config": a.model.model_dump(),
                 "symbols": symbols.to_json(), "sample_rate": CONTENT_RATE}
        return store.save(step, {NET: model.state_dict()}, state, {"val_loss": val_loss, "per": per, "loss": last_loss},
                          run_lineage, keep_best=a.keep_best)

    started, steps_run, last_loss, saved_step = time.perf_counter(), 0, None, step
    while step < a.max_steps and order.epoch < a.epochs:
        for indices in order:
            batch = {k: v.to(device, non_blocking=True) for k, v in collate(cache, [train_rows[i] for i in indices]).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = ctc_loss(ctc_logits(net, model, batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
            optimizer.step()
            order.advance()
            step, steps_run = step + 1, steps_run + 1
            last_loss = float(loss.detach())
            if world > 1:
                t = torch.tensor([last_loss], device=device)
                dist.all_reduce(t)
                last_loss = float(t) / world
            if not math.isfinite(last_loss):
                raise AsrError(f"step {step}: the CTC loss is {last_loss} (diverged); lower asr.learning_rate")
            if on_step is not None:
                on_step({"step": step, "loss": last_loss})
            if rank == 0 and step % a.log_interval == 0:
                writer.add_scalar("asr/ctc_loss", last_loss, step)
                logger.info("step %d epoch %d: CTC loss %.4f, %.2f steps/s", step, order.epoch, last_loss,
                            steps_run / (time.perf_counter() - started))
            if rank == 0 and (step % a.eval_interval == 0 or step % a.save_interval == 0 or step >= a.max_steps):
                examples: list = []
                val_loss, per = validate(model, cache, val_rows, device, examples)
                if val_loss is not None:
                    writer.add_scalar("asr/val_ctc_loss", val_loss, step)
                    writer.add_scalar("asr/val_per", per, step)
                for clip_id, target, hyp in examples:  # what the recogniser hears, beside what was said
                    writer.add_text(f"asr/val/{clip_id}", f"said: {' '.join(symbols.symbols[i] for i in target)}  \n"
                                    f"heard: {' '.join(symbols.symbols[i] for i in hyp)}", step)
            if step % a.save_interval == 0 or step >= a.max_steps:
                manifest, saved_step = save() or manifest, step
            if step >= a.max_steps:
                break
        else:
            order.next_epoch()
    if saved_step != step or (not resuming and steps_run == 0):
        manifest = save() or manifest
    if writer is not None:
        writer.close()
    logger.info("run %s: step %d, val CTC loss %s, PER %s (%d steps in %.1f s)", run_id, step, val_loss, per,
                steps_run, time.perf_counter() - started)
    if world > 1:
        dist.barrier()
    return TrainResult(run_id, step, order.epoch, manifest if rank == 0 else None, val_loss, per, model)


def main(argv: Optional[list[str]] = None) -> None:
    from tasks.training.launch import trainer_main

    trainer_main("Train the ASR content encoder on the corpus's phones (one process or torchrun).", train, argv)


if __name__ == "__main__":
    main()

"""The WaveGlow trainer: NVIDIA's train.py recipe on the pipeline's clips, one loop top to bottom.

    python -m tasks.training.waveglow --params params.yaml                          # one process
    torchrun --nproc_per_node 2 -m tasks.training.waveglow --params params.yaml     # DDP

(`vitsflow waveglow`, the DVC stage `waveglow`, runs one of the two as params.vocoder.nproc says.)

What a step does, as NVIDIA's train.py: a batch of random `segment_length` slices of clips with
their log-mels, `model(mel, audio)`, `WaveGlowLoss(sigma)`, backward, Adam (lr 1e-4). NVIDIA's
`fp16_run` (apex amp) is `precision: fp16` (CUDA autocast with a GradScaler); `bf16` is the same
without a scaler. The clips are the ingested ones at the vocoder's rate with their mels
(tasks/prep/vocoder.py, cached by content); a slice starts at a multiple of the hop and its mel is
cut from the clip's mel, so a clip's mel is computed once, not per step. Inside the slice the
frames equal NVIDIA's per-segment `get_mel`; at its two edges the mel sees the real neighbouring
audio where NVIDIA's reflect-pads the slice. Clips shorter than a slice are zero-padded and their
mel computed on the padded slice, as NVIDIA does.

Every random choice is a function of (seed, epoch, position): the epoch's order is a permutation
seeded by seed + epoch, each slice's start by (seed, epoch, clip index). So a resumed run (the
latest checkpoint: model, optimizer, scaler, epoch, position, RNG states) continues with exactly
the batches and losses an uninterrupted run would have (tested after SIGKILL). Checkpoints are
tasks.core.checkpoints bundles under `runs/<run_id>/` on params.storage (atomic, verified,
manifest with lineage); the run id hashes the vocoder params (minus how-only knobs; init_from as
written, not the file's bytes) and the clips' audio. `val_loss` is the loss on the first slice of each val clip, by which
the best `keep_best` bundles are kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model.waveglow import CheckpointError as WaveGlowCheckpointError
from model.waveglow import MAX_WAV_VALUE, Denoiser, WaveGlow, WaveGlowLoss, load_nvidia_checkpoint, mel_spectrogram
from model.waveglow_config import check_config
from tasks.core import paths
from tasks.core.cache import ResultCache
from tasks.core.checkpoints import CheckpointStore, all_rng_states, lineage, set_rng_state
from tasks.core.config import Params, VocoderConfig, resolve_local
from tasks.core.storage import open_storage, storage_from_config
from tasks.prep.ingest import read_index
from tasks.prep.clips import rejected as clip_rejects
from tasks.prep.vocoder import CACHE_NAME, plan_vocoder, read_features
from tasks.training.launch import setup_distributed
from tasks.training.order import Order

logger = logging.getLogger("vitsflow.waveglow")

NET = "WaveGlow"  # the bundle's network name
# Vocoder params that change how a run goes, not what it computes: outside the run id, so raising
# max_steps or changing an interval continues the same run.
HOW_ONLY = {"enabled", "max_steps", "epochs", "log_interval", "eval_interval", "save_interval", "keep_best",
            "val_max_utterances", "nproc", "device", "infer_sigma", "denoise", "run_id"}


class VocoderError(ValueError):
    """The vocoder cannot train or load; the message says which file or setting and why."""


# ----------------------------------------------------------------------------- run identity


def clips(root: Path, params: Params) -> dict[str, list[dict[str, Any]]]:
    """The ingested clips by split, with their vocoder cache keys (`key`); not the stage's rejects
    (a clip too short for the mel: tasks.prep.clips.short_clip)."""
    rows = read_index(resolve_local(root, paths.INGEST))
    items = plan_vocoder(rows, params)
    rejected = clip_rejects(ResultCache(resolve_local(root, params.runtime.cache_dir) / f"{CACHE_NAME}.sqlite"),
                            (i.key for i in items))
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for item in (i for i in items if i.key not in rejected):
        out.setdefault(item.row["split"], []).append({**item.row, "key": item.key})
    return out


def run_id_for(params: Params, root: Path) -> str:
    """The run these params and clips define. The clips count by their audio (ingest's sha256) and
    split, with the rate they are resampled from; not by their feature cache keys, which also hash
    the code and the torch/soxr versions: an edit anywhere in that code (tasks/core/config.py
    included) or a library upgrade would otherwise start a new run instead of resuming this one."""
    v = params.vocoder
    if v.run_id:
        return v.run_id
    split = clips(root, params)
    what = {"vocoder": v.model_dump(mode="json", exclude=HOW_ONLY), "source_rate": params.audio.sample_rate,
            "clips": hashlib.sha256("\n".join(f"{r['split']}:{r['sha256']}" for s in ("train", "val")
                                              for r in split[s]).encode()).hexdigest()}
    return "waveglow-" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- data


class Segments:
    """The clips of one split as (mel [B, M, S/256 + 1], audio [B, S]) batches of random slices."""

    def __init__(self, cache: ResultCache, rows: list[dict[str, Any]], v: VocoderConfig):
        self.cache, self.rows, self.v = cache, rows, v
        self.segment = v.data_config.segment_length
        self.hop = v.data_config.hop_length
        self.frames = self.segment // self.hop + 1  # get_mel of a segment: T // hop + 1 frames

    def __len__(self) -> int:
        return len(self.rows)

    def item(self, index: int, start_rng: Optional[np.random.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip `index`'s slice: a random hop-aligned start (start_rng), or the first slice (None)."""
        pcm, mel = read_features(self.cache, self.rows[index]["key"])
        if len(pcm) >= self.segment:
            starts = (len(pcm) - self.segment) // self.hop + 1
            frame = int(start_rng.integers(starts)) if start_rng is not None else 0
            audio = torch.from_numpy(pcm[frame * self.hop:frame * self.hop + self.segment].astype(np.float32))
            return torch.from_numpy(mel[:, frame:frame + self.frames].copy()), audio / MAX_WAV_VALUE
        audio = torch.zeros(self.segment)  # NVIDIA: zero-pad, then get_mel of the padded slice
        audio[:len(pcm)] = torch.from_numpy(pcm.astype(np.float32)) / MAX_WAV_VALUE
        mel_kwargs = self.v.data_config.mel_kwargs(self.v.waveglow_config.n_mel_channels)
        return mel_spectrogram(audio[None], **mel_kwargs)[0], audio

    def batch(self, indices: list[int], epoch: Optional[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.item(i, np.random.default_rng([seed, epoch, i]) if epoch is not None else None)
                 for i in indices]
        return torch.stack([m for m, _ in items]), torch.stack([a for _, a in items])


# ----------------------------------------------------------------------------- model and init


def check_vocoder(v: VocoderConfig) -> None:
    """Whether waveglow_config builds a consistent flow (model/waveglow_config.py's rules, which
    params validation leaves to the stage): VocoderError naming the key, before any work."""
    try:
        check_config(**v.waveglow_config.model_dump())
    except ValueError as err:
        raise VocoderError(f"params vocoder.{str(err).removeprefix('vocoder.')}") from None


def build_model(v: VocoderConfig) -> WaveGlow:
    return WaveGlow(**v.waveglow_config.model_dump())


def load_initial(v: VocoderConfig, root: Path, params: Params) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict and provenance of `vocoder.init_from`: an NVIDIA checkpoint, a state dict or
    safetensors file (local or s3://), or `run:<run_id>[:<step>]` on params.storage."""
    ref = v.init_from
    if ref.startswith("run:"):
        _, run_id, *step = ref.split(":")
        nets, state, manifest = CheckpointStore(storage_from_config(params.storage, root), run_id).load(
            int(step[0]) if step else None)
        if NET not in nets:
            raise VocoderError(f"vocoder.init_from {ref}: the bundle holds {sorted(nets)}, no {NET}")
        config = state.get("waveglow_config")
        if config is not None and config != v.waveglow_config.model_dump():
            raise VocoderError(f"vocoder.init_from {ref}: the bundle ({manifest['path']}) is WaveGlow({config}), params "
                               f"vocoder.waveglow_config say {v.waveglow_config.model_dump()}: set them to the bundle's")
        return nets[NET], {"init_from": ref, "step": manifest["step"]}
    if ref.startswith("s3://"):
        import tempfile

        folder, _, name = ref.rpartition("/")
        storage = open_storage(folder, root, params.storage.endpoint_url, params.storage.region)
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as tmp:
            tmp.write(storage.read_bytes(name))
            tmp.flush()
            try:
                model, info = load_nvidia_checkpoint(tmp.name)
            except WaveGlowCheckpointError as err:  # name the URI, not the temporary copy
                raise WaveGlowCheckpointError(str(err).replace(tmp.name, ref)) from None
    else:
        model, info = load_nvidia_checkpoint(resolve_local(root, ref))
    if info["config"] != v.waveglow_config.model_dump():
        raise VocoderError(f"vocoder.init_from {ref}: the checkpoint is WaveGlow({info['config']}), params "
                           f"vocoder.waveglow_config say {v.waveglow_config.model_dump()}: set them to the checkpoint's")
    if not model.has_weight_norm:
        raise VocoderError(f"vocoder.init_from {ref}: its weight norm was removed (an inference export); "
                           "fine-tuning needs the training form (weight_g/weight_v)")
    return model.state_dict(), {"init_from": ref, "format": info["format"], "iteration": info["iteration"]}


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    run_id: str
    step: int
    epoch: int
    manifest: Optional[dict]
    val_loss: Optional[float]
    model: WaveGlow


@torch.no_grad()
def validation_loss(model: WaveGlow, val: Segments, criterion: WaveGlowLoss, device: torch.device) -> Optional[float]:
    """Mean loss over the first slice of each val clip (no randomness: comparable across steps)."""
    if not len(val):
        return None
    was = model.training
    model.eval()
    total = 0.0
    for i in range(len(val)):
        mel, audio = val.batch([i], None, 0)
        total += float(criterion(model(mel.to(device), audio.to(device))))
    model.train(was)
    return total / len(val)


def train(params: Params, root: Path, on_step: Optional[Callable[[dict], None]] = None) -> TrainResult:
    """Train (or resume) the WaveGlow run these params and clips define, until vocoder.max_steps."""
    v, root = params.vocoder, Path(root)
    check_vocoder(v)
    rank, world, local_rank, device = setup_distributed(v.device)
    run_id = run_id_for(params, root)
    cache = ResultCache(resolve_local(root, params.runtime.cache_dir) / f"{CACHE_NAME}.sqlite")
    split = clips(root, params)
    missing = cache.missing(r["key"] for s in split.values() for r in s)
    if missing:
        raise VocoderError(f"{len(missing)} clips have no vocoder features in {cache.path}: run the waveglow "
                           "stage (vitsflow waveglow), which computes them before training")
    train_set = Segments(cache, split["train"], v)
    val_set = Segments(cache, split["val"][: v.val_max_utterances], v)
    if len(train_set) < v.batch_size * world:
        raise VocoderError(f"{len(train_set)} training clips cannot fill one batch of vocoder.batch_size "
                           f"{v.batch_size} on {world} processes (clips too short for the mel are left out: "
                           "params audio.min_seconds)")
    order = Order(len(train_set), v.batch_size, v.seed, rank, world)

    torch.manual_seed(v.seed)  # NVIDIA: torch.manual_seed(seed) before building the model
    model = build_model(v).to(device)
    store = CheckpointStore(storage_from_config(params.storage, root), run_id)
    resuming = store.latest() is not None
    initial = {}
    if not resuming and v.init_from:
        sd, initial = load_initial(v, root, params)
        model.load_state_dict(sd, strict=True)
        logger.info("initialised from %s", initial)
    optimizer = torch.optim.Adam(model.parameters(), lr=v.learning_rate)
    scaler = torch.amp.GradScaler(device.type, enabled=v.precision == "fp16" and device.type == "cuda")
    if v.precision != "fp32" and device.type != "cuda":
        logger.warning("vocoder.precision %s applies on CUDA only: training in fp32 on %s", v.precision, device)
    criterion = WaveGlowLoss(v.sigma)
    step, val_loss, manifest = 0, None, None
    if resuming:
        nets, state, manifest = store.load()
        model.load_state_dict(nets[NET], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] and scaler.is_enabled():  # empty when saved without fp16 on CUDA
            scaler.load_state_dict(state["scaler"])
        order.load_state_dict(state["order"])
        step, val_loss = int(state["step"]), state.get("val_loss")
        initial = state.get("initial") or {}
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])
        else:  # another nproc: the batches continue, but not as the uninterrupted run's would
            logger.warning("run %s was saved by %d processes, resumed by %d: not an exact resume",
                           run_id, len(state["rng"]), world)
        logger.info("resumed run %s at step %d (epoch %d, batch %d)", run_id, step, order.epoch, order.position)
    else:
        logger.info("new run %s: %d train clips, %d val clips, %s", run_id, len(train_set), len(val_set), device)
    net = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None) if world > 1 else model
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(v.precision)
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None and device.type == "cuda")
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(resolve_local(root, params.train.log_dir) / run_id))
    run_lineage = lineage(root)

    def save() -> Optional[dict]:
        rngs = all_rng_states(world)
        if rank != 0:
            return None
        state = {"step": step, "order": order.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rngs, "world_size": world, "val_loss": val_loss,
                 "initial": initial, "waveglow_config": v.waveglow_config.model_dump(),
                 "data_config": v.data_config.model_dump(), "sample_rate": v.data_config.sampling_rate}
        return store.save(step, {NET: model.state_dict()}, state, {"val_loss": val_loss, "loss": last_loss},
                          run_lineage, keep_best=v.keep_best)

    started, steps_run, last_loss, saved_step = time.perf_counter(), 0, None, step
    while step < v.max_steps and order.epoch < v.epochs:
        for indices in order:
            mel, audio = train_set.batch(indices, order.epoch, v.seed)
            mel, audio = mel.to(device, non_blocking=True), audio.to(device, non_blocking=True)
            with autocast:
                z, log_s, log_det_w = net(mel, audio)
            loss = criterion((z.float(), [s.float() for s in log_s], [d.float() for d in log_det_w]))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            order.advance()
            step, steps_run = step + 1, steps_run + 1
            last_loss = float(loss.detach())
            if world > 1:  # the mean over ranks, as NVIDIA's reduce_tensor
                t = torch.tensor([last_loss], device=device)
                dist.all_reduce(t)
                last_loss = float(t) / world
            if not math.isfinite(last_loss):
                raise VocoderError(f"step {step}: the loss is {last_loss} (diverged); lower vocoder.learning_rate "
                                   "or resume from an earlier checkpoint")
            if on_step is not None:
                on_step({"step": step, "loss": last_loss})
            if rank == 0 and step % v.log_interval == 0:
                writer.add_scalar("vocoder/loss", last_loss, step)
                logger.info("step %d epoch %d: loss %.4f, %.2f steps/s", step, order.epoch, last_loss,
                            steps_run / (time.perf_counter() - started))
            if step % v.eval_interval == 0 or step % v.save_interval == 0 or step >= v.max_steps:
                if rank == 0:
                    val_loss = validation_loss(model, val_set, criterion, device)
                    if val_loss is not None:
                        writer.add_scalar("vocoder/val_loss", val_loss, step)
                        _log_audio(writer, model, val_set, v, device, step)
            if step % v.save_interval == 0 or step >= v.max_steps:
                manifest, saved_step = save() or manifest, step
            if step >= v.max_steps:
                break
        else:
            order.next_epoch()
    if saved_step != step or (not resuming and steps_run == 0):  # (the latter: max_steps 0 still leaves a bundle)
        manifest = save() or manifest
    if writer is not None:
        writer.close()
    seconds = max(time.perf_counter() - started, 1e-9)
    logger.info("run %s: step %d, val_loss %s (%d steps in %.1f s)", run_id, step, val_loss, steps_run, seconds)
    if world > 1:
        dist.barrier()
    return TrainResult(run_id, step, order.epoch, manifest if rank == 0 else None, val_loss, model)


def _log_audio(writer, model: WaveGlow, val: Segments, v: VocoderConfig, device: torch.device, step: int) -> None:
    """The first val clip's copy-synthesis (its mel through the model, denoised) next to it."""
    pcm, mel = read_features(val.cache, val.rows[0]["key"])
    sr = v.data_config.sampling_rate
    was = model.training
    model.eval()
    with torch.no_grad():
        audio = model.infer(torch.from_numpy(mel.copy())[None].to(device), sigma=v.infer_sigma)
        if v.denoise > 0:
            audio = Denoiser(model)(audio, v.denoise)[:, 0]
    model.train(was)
    writer.add_audio("vocoder/copy_synthesis", audio[0].float().clamp(-1, 1).cpu(), step, sample_rate=sr)
    writer.add_audio("vocoder/recording", torch.from_numpy(pcm.astype(np.float32) / MAX_WAV_VALUE), step,
                     sample_rate=sr)


def main(argv: Optional[list[str]] = None) -> None:
    from tasks.training.launch import trainer_main

    trainer_main("Train WaveGlow on the ingested clips (one process or torchrun).", train, argv)


if __name__ == "__main__":
    main()

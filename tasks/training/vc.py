"""The HiFi-VC trainer (model/hifivc.py): the generator, F0 encoder and speaker VAE trained on the
ingested clips with the `asr` stage's content encoder frozen, one loop top to bottom.

    python -m tasks.training.vc --params params.yaml        # one process
    torchrun --nproc_per_node 2 -m tasks.training.vc        # DDP (vc.nproc > 1: the stage does this)

(`vitsflow vc`, the DVC stage `vc`, runs it.)

A step, as HiFi-GAN's train.py with the VAE added: for each clip of the batch its bottleneck (the
frozen encoder on its cached 16 kHz mel) and F0 features, a random slice of `segment_frames`
content frames (480 samples each at 24 kHz) with the matching 24 kHz audio; the speaker
embedding sampled from the VAE on a `reference_seconds` window of *another* clip of the same
speaker (the model cannot copy its target; a speaker with one clip is its own reference, counted
in the log); the multi-period (+ one scale) discriminator takes a step on real vs detached
audio, then the generator side on adversarial + feature matching + c_mel * mel L1 + c_kl * KL.
Two AdamW optimizers (betas 0.8, 0.99, as HiFi-GAN). Under torchrun each rank takes its share of
each batch order (Order's rank/world), the trainable nets (speaker VAE, F0 encoder, generator, in
`Step`) and the discriminator are DDP-wrapped, rank 0 validates and saves (every rank's RNG state
in the bundle); `precision: bf16` autocasts the forward passes on CUDA (the mel loss in fp32).
The content encoder's input is each clip's mel resized along frequency by a random factor in
`content_warp` (`warp_mel`). Every random choice is a function of (seed, epoch, clip) or of the
torch RNG in the checkpoint, so a resumed run continues with the
losses of an uninterrupted one (tested on the CPU). Validation: each val clip converted to its
own speaker (reference: the first other clip of that speaker, the embedding's mean), mel L1
against the recording; the best `keep_best` bundles by it are kept.
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
from torch.nn import functional as F

from model.hifivc import CONTENT_HOP, OUTPUT_RATE, SPEAKER_MEL, HiFiVC, kl_divergence
from model.losses import discriminator_loss, feature_loss, generator_loss
from model.models import MultiPeriodDiscriminator
from tasks.core import paths
from tasks.core.cache import ResultCache
from tasks.core.checkpoints import CheckpointStore, all_rng_states, lineage, set_rng_state
from tasks.core.config import Params, resolve_local
from tasks.core.storage import storage_from_config
from tasks.prep.content import CACHE_NAME, VC_CACHE_NAME, plan_content, plan_vc, read_mel, read_vc
from tasks.prep.clips import rejected as clip_rejects
from tasks.prep.ingest import read_index
from tasks.training.asr import NET as ASR_NET
from tasks.training.order import Order

logger = logging.getLogger("vitsflow.vc")

NET, DISC = "HiFiVC", "D"
SAMPLES_PER_FRAME = OUTPUT_RATE * 2 * CONTENT_HOP // 16000  # 480: one 20 ms content frame at 24 kHz
AUDIO_SAMPLES = 2  # val conversions written to TensorBoard at each validation
HOW_ONLY = {"enabled", "max_steps", "epochs", "log_interval", "eval_interval", "save_interval", "keep_best",
            "val_max_utterances", "device", "run_id", "eval", "promotion", "nproc"}


class VcError(ValueError):
    """HiFi-VC cannot train; the message says which file or setting and why."""


# ----------------------------------------------------------------------------- the content encoder


def asr_checkpoint(root: Path, params: Params, record_path: str = paths.ASR_RECORD) -> tuple[dict, dict, dict]:
    """(ContentEncoder state dict, its model config, {"run_id", "step"}) of the asr stage's record."""
    path = resolve_local(root, record_path)
    if not path.is_file():
        raise VcError(f"{path}: the asr stage's record is missing; the vc stage needs its content encoder "
                      "(params asr.enabled: true, then dvc repro asr)")
    record = json.loads(path.read_text(encoding="utf-8"))
    if not record.get("enabled"):
        raise VcError(f"{path}: the asr stage was off; the vc stage needs its content encoder (params asr.enabled)")
    store = CheckpointStore(storage_from_config(params.storage, root), record["run_id"])
    nets, state, _ = store.load(int(record["checkpoint"]["step"]))
    config = {**state["model_config"], "n_symbols": len(state["symbols"]["symbols"]) - 1}  # its CTC head comes along
    return nets[ASR_NET], config, {"run_id": record["run_id"], "step": int(record["checkpoint"]["step"])}


def build_model(params: Params, asr_config: dict) -> HiFiVC:
    m = params.vc.model
    return HiFiVC(**asr_config, f0_channels=m.f0_channels, f0_norm=m.f0_norm, speaker_dim=m.speaker_dim,
                  upsample_initial_channel=m.upsample_initial_channel, resblock=m.resblock,
                  resblock_kernel_sizes=m.resblock_kernel_sizes, resblock_dilation_sizes=m.resblock_dilation_sizes)


# ----------------------------------------------------------------------------- data


def clips(root: Path, params: Params) -> dict[str, list[dict[str, Any]]]:
    """The ingested clips by split, each with its content-mel key (`mel_key`) and vc key (`key`);
    not those either cache holds as a reject (tasks.prep.clips.short_clip)."""
    rows = read_index(resolve_local(root, paths.INGEST))
    sr = params.audio.sample_rate
    cache_dir = resolve_local(root, params.runtime.cache_dir)
    pairs = list(zip(plan_content(rows, sr), plan_vc(rows, sr)))
    rejected = {**clip_rejects(ResultCache(cache_dir / f"{CACHE_NAME}.sqlite"), (m.key for m, _ in pairs)),
                **clip_rejects(ResultCache(cache_dir / f"{VC_CACHE_NAME}.sqlite"), (v.key for _, v in pairs))}
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for mel_item, vc_item in pairs:
        if mel_item.key in rejected or vc_item.key in rejected:
            continue
        out.setdefault(mel_item.row["split"], []).append({**mel_item.row, "mel_key": mel_item.key, "key": vc_item.key})
    return out


def run_id_for(params: Params, split: dict[str, list[dict[str, Any]]], encoder: dict) -> str:
    v = params.vc
    if v.run_id:
        return v.run_id
    what = {"vc": v.model_dump(mode="json", exclude=HOW_ONLY), "encoder": encoder, "source_rate": params.audio.sample_rate,
            "clips": hashlib.sha256("\n".join(f"{r['split']}:{r['speaker']}:{r['sha256']}" for s in ("train", "val")
                                              for r in split.get(s, [])).encode()).hexdigest()}
    return "vc-" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def warp_mel(mel: torch.Tensor, factor: float) -> torch.Tensor:
    """[B, M, T] log-mel with its frequency axis resized by `factor` (> 1: formants and harmonics
    move up), cropped or padded (with the floor, log 1e-5) back to M bins: FreeVC's spectrogram
    resize. The target audio is not warped, so timbre and pitch level the encoder passes on become
    unreliable and the generator learns to take them from the reference's embedding."""
    m = mel.shape[1]
    n = max(1, int(round(m * factor)))
    resized = F.interpolate(mel.transpose(1, 2), size=n, mode="linear", align_corners=False).transpose(1, 2)
    if n >= m:
        return resized[:, :m]
    return F.pad(resized, (0, 0, 0, m - n), value=math.log(1e-5))


class Clips:
    """One split's clips as training batches: slices of (generator input, 24 kHz audio) and
    reference mels of each clip's speaker's other clips."""

    def __init__(self, model: HiFiVC, mel_cache: ResultCache, vc_cache: ResultCache, rows: list[dict[str, Any]],
                 pool: list[dict[str, Any]], params: Params, device: torch.device):
        self.model, self.mel_cache, self.vc_cache, self.rows, self.device = model, mel_cache, vc_cache, rows, device
        self.frames, self.warp = params.vc.segment_frames, params.vc.content_warp
        self.ref_frames = max(32, int(params.vc.reference_seconds * SPEAKER_MEL["sample_rate"] / SPEAKER_MEL["hop_length"]))
        by_speaker: dict[str, list[dict[str, Any]]] = {}
        for r in pool:
            by_speaker.setdefault(r["speaker"], []).append(r)
        self.others = [[o for o in by_speaker[r["speaker"]] if o["id"] != r["id"]] or [r] for r in rows]
        self.self_referenced = sum(o[0]["id"] == r["id"] for o, r in zip(self.others, rows))

    def content(self, row: dict[str, Any], rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        """The frozen encoder's bottleneck [1, d, Tc] of the clip's cached mel; with `rng` (training)
        and vc.content_warp, of the mel resized along frequency by a random factor first."""
        mel = torch.from_numpy(read_mel(self.mel_cache, row["mel_key"]).copy())[None].to(self.device)
        if rng is not None and self.warp is not None:
            mel = warp_mel(mel, float(rng.uniform(*self.warp)))
        with torch.no_grad():
            return self.model.content(mel)  # [1, d, Tc], frozen

    def reference(self, row: dict[str, Any], rng: Optional[np.random.Generator]) -> torch.Tensor:
        """[80, <= ref_frames] log-mel of a window of `row`'s 24 kHz audio (rng None: its start)."""
        pcm = read_vc(self.vc_cache, row["key"])[1]
        wav = torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None].to(self.device)
        mel = self.model.speaker_mel(wav)[0]
        start = int(rng.integers(max(1, mel.shape[1] - self.ref_frames + 1))) if rng is not None else 0
        return mel[:, start:start + self.ref_frames]

    def batch(self, indices: list[int], epoch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(content and F0 inputs [B, d + 2, frames], audio [B, 1, frames * 480], reference mels
        [B, 80, R]); the F0 inputs are `F0Encoder.inputs` of the whole clip, sliced."""
        xs, ys, refs = [], [], []
        for i in indices:
            row, rng = self.rows[i], np.random.default_rng([seed, epoch, i])
            lf0, pcm = read_vc(self.vc_cache, row["key"])
            content = self.content(row, rng)
            f0_in = self.model.f0.inputs(torch.from_numpy(lf0.copy())[None].to(self.device), content.shape[-1])
            x = torch.cat([content, f0_in], 1)[0]
            start = int(rng.integers(max(1, x.shape[1] - self.frames + 1)))
            x = x[:, start:start + self.frames]
            y = torch.zeros(self.frames * SAMPLES_PER_FRAME)
            cut = pcm[start * SAMPLES_PER_FRAME:(start + self.frames) * SAMPLES_PER_FRAME].astype(np.float32) / 32768.0
            y[:len(cut)] = torch.from_numpy(cut)
            xs.append(F.pad(x, (0, self.frames - x.shape[1])))
            ys.append(y)
            others = self.others[i]
            refs.append(self.reference(others[int(rng.integers(len(others)))], rng))
        r = min(m.shape[1] for m in refs)
        return torch.stack(xs), torch.stack(ys)[:, None].to(self.device), torch.stack([m[:, :r] for m in refs])


class Step(torch.nn.Module):
    """The trainable path of a step, one module so that DDP syncs all of it: reference mel ->
    embedding (sampled), content + F0 inputs -> F0 features -> generator -> audio."""

    def __init__(self, model: HiFiVC):
        super().__init__()
        self.speaker_encoder, self.f0, self.generator = model.speaker_encoder, model.f0, model.generator
        self.d = model.content.d_model

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.speaker_encoder(ref)
        emb = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        h = torch.cat([x[:, :self.d], self.f0.encode(x[:, self.d:])], 1)
        return self.generator(h, emb), mean, logvar  # [B, 1, frames * 480]


@torch.no_grad()
def validation_mel_l1(model: HiFiVC, val: Clips, audio: Optional[list] = None) -> Optional[float]:
    """Each val clip converted to its own speaker (the first other clip's reference window, the
    embedding's mean): mel L1 against its recording, averaged. `audio`: a list to append the
    first conversions to, (clip id, 24 kHz audio [N]) (for TensorBoard)."""
    if not val.rows:
        return None
    was = model.training
    model.eval()
    total = 0.0
    for n, (row, others) in enumerate(zip(val.rows, val.others)):
        lf0, pcm = read_vc(val.vc_cache, row["key"])
        emb, _, _ = model.speaker(val.reference(others[0], None)[None])
        wav = model.decode(val.content(row), torch.from_numpy(lf0.copy())[None].to(val.device), emb)[:, 0]
        target = torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None].to(val.device)
        m = min(wav.shape[1], target.shape[1])
        a, b = model.speaker_mel(wav[:, :m]), model.speaker_mel(target[:, :m])
        total += float(F.l1_loss(a, b))
        if audio is not None and n < AUDIO_SAMPLES:
            audio.append((row["id"], wav[0, :m].float().cpu()))
    model.train(was)
    model.content.eval()
    return total / len(val.rows)


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    run_id: str
    step: int
    epoch: int
    manifest: Optional[dict]
    val_loss: Optional[float]
    model: HiFiVC


def train(params: Params, root: Path, on_step: Optional[Callable[[dict], None]] = None) -> TrainResult:
    """Train (or resume) the HiFi-VC run these params, the asr encoder and the clips define."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from tasks.training.launch import setup_distributed

    v, root = params.vc, Path(root)
    rank, world, local_rank, device = setup_distributed(v.device)
    encoder_sd, asr_config, encoder = asr_checkpoint(root, params)
    split = clips(root, params)
    run_id = run_id_for(params, split, encoder)
    cache_dir = resolve_local(root, params.runtime.cache_dir)
    mel_cache, vc_cache = ResultCache(cache_dir / f"{CACHE_NAME}.sqlite"), ResultCache(cache_dir / f"{VC_CACHE_NAME}.sqlite")
    rows = [r for s in split.values() for r in s]
    missing = len(mel_cache.missing(r["mel_key"] for r in rows)) + len(vc_cache.missing(r["key"] for r in rows))
    if missing:
        raise VcError(f"{missing} clip features are missing from {cache_dir} (asr.sqlite, vc.sqlite): run the vc "
                      "stage (vitsflow vc), which computes them before training")
    if len(split["train"]) < v.batch_size * world:
        raise VcError(f"{len(split['train'])} training clips cannot fill one batch of vc.batch_size {v.batch_size} "
                      f"on {world} processes (clips too short for the features are left out: params "
                      "audio.min_seconds)")

    torch.manual_seed(v.seed)  # the same initial weights on every rank
    model = build_model(params, asr_config).to(device)
    model.content.load_state_dict(encoder_sd, strict=True)
    model.content.requires_grad_(False).eval()
    disc = MultiPeriodDiscriminator(divisor=v.model.disc_divisor).to(device)
    torch.manual_seed(v.seed + rank)  # and each rank its own embedding samples
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim_g = torch.optim.AdamW(trainable, v.learning_rate, betas=v.betas)
    optim_d = torch.optim.AdamW(disc.parameters(), v.learning_rate, betas=v.betas)
    train_set = Clips(model, mel_cache, vc_cache, split["train"], split["train"], params, device)
    val_set = Clips(model, mel_cache, vc_cache, split["val"][: v.val_max_utterances], split["train"] + split["val"],
                    params, device)
    order = Order(len(train_set.rows), v.batch_size, v.seed, rank, world)
    store = CheckpointStore(storage_from_config(params.storage, root), run_id)
    resuming = store.latest() is not None
    step, val_loss, manifest = 0, None, None
    if resuming:
        nets, state, manifest = store.load()
        model.load_state_dict(nets[NET], strict=True)
        disc.load_state_dict(nets[DISC], strict=True)
        optim_g.load_state_dict(state["optim_g"])
        optim_d.load_state_dict(state["optim_d"])
        order.load_state_dict(state["order"])
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])
        else:
            logger.warning("run %s was saved by %d processes, resumed by %d: not an exact resume",
                           run_id, len(state["rng"]), world)
        step, val_loss = int(state["step"]), state.get("val_loss")
        logger.info("resumed run %s at step %d (epoch %d, batch %d)", run_id, step, order.epoch, order.position)
    else:
        logger.info("new run %s: %d train clips (%d their own reference: a speaker with one clip), %d val clips, "
                    "content encoder %s, %s x %d", run_id, len(train_set.rows), train_set.self_referenced,
                    len(val_set.rows), encoder, device, world)
    ids = [local_rank] if device.type == "cuda" else None
    step_net = Step(model)
    g_net = DDP(step_net, device_ids=ids) if world > 1 else step_net
    d_net = DDP(disc, device_ids=ids) if world > 1 else disc
    use_bf16 = v.precision == "bf16" and device.type == "cuda"
    if v.precision == "bf16" and not use_bf16:
        logger.warning("vc.precision bf16 applies on CUDA only: training in fp32 on %s", device)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(resolve_local(root, params.train.log_dir) / run_id))
    run_lineage = lineage(root)

    def validate() -> None:
        nonlocal val_loss
        audio: list = []
        val_loss = validation_mel_l1(model, val_set, audio)
        if val_loss is not None:
            writer.add_scalar("vc/val_mel_l1", val_loss, step)
        for clip_id, wav in audio:
            writer.add_audio(f"vc/val/{clip_id}", wav.clamp(-1, 1), step, sample_rate=OUTPUT_RATE)

    def save() -> Optional[dict]:
        rngs = all_rng_states(world)
        if rank != 0:
            return None
        state = {"step": step, "order": order.state_dict(), "optim_g": optim_g.state_dict(),
                 "optim_d": optim_d.state_dict(), "rng": rngs, "world_size": world, "val_loss": val_loss,
                 "encoder": encoder, "model_config": {**asr_config, **v.model.model_dump()}, "sample_rate": OUTPUT_RATE}
        return store.save(step, {NET: model.state_dict(), DISC: disc.state_dict()}, state,
                          {"val_loss": val_loss, **{k: last.get(k) for k in ("g/mel", "d/total")}}, run_lineage,
                          keep_best=v.keep_best)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    started, steps_run, last, saved_step = time.perf_counter(), 0, {}, step
    while step < v.max_steps and order.epoch < v.epochs:
        for indices in order:
            x, y, ref = train_set.batch(indices, order.epoch, v.seed)
            with autocast():
                y_hat, mean, logvar = g_net(x, ref)  # [B, 1, frames * 480]
                y_d_r, y_d_g, _, _ = d_net(y, y_hat.detach())
                loss_d, _, _ = discriminator_loss(y_d_r, y_d_g)
            optim_d.zero_grad(set_to_none=True)
            loss_d.backward()
            optim_d.step()
            with autocast():
                _, y_d_g, fmap_r, fmap_g = d_net(y, y_hat)
                loss_gen = generator_loss(y_d_g)[0]
                loss_fm = feature_loss(fmap_r, fmap_g)
            loss_mel = F.l1_loss(model.speaker_mel(y_hat[:, 0].float()), model.speaker_mel(y[:, 0]))  # fp32
            loss_kl = kl_divergence(mean.float(), logvar.float())
            loss_g = loss_gen + loss_fm + v.c_mel * loss_mel + v.c_kl * loss_kl
            optim_g.zero_grad(set_to_none=True)
            loss_g.backward()
            optim_g.step()
            order.advance()
            step, steps_run = step + 1, steps_run + 1
            values = torch.stack([t.detach().float() for t in (loss_g, loss_mel, loss_kl, loss_gen, loss_fm, loss_d)])
            if world > 1:
                dist.all_reduce(values)
                values /= world
            last = dict(zip(("g/total", "g/mel", "g/kl", "g/gen", "g/fm", "d/total"), values.tolist()))
            if not all(math.isfinite(x) for x in last.values()):
                raise VcError(f"step {step}: a loss is not finite ({last}); lower vc.learning_rate")
            if on_step is not None:
                on_step({"step": step, **last})
            if rank == 0 and step % v.log_interval == 0:
                for k, val in last.items():
                    writer.add_scalar(f"vc/{k}", val, step)
                logger.info("step %d epoch %d: mel L1 %.4f, D %.4f, %.2f steps/s", step, order.epoch, last["g/mel"],
                            last["d/total"], steps_run / (time.perf_counter() - started))
            if rank == 0 and (step % v.eval_interval == 0 or step % v.save_interval == 0 or step >= v.max_steps):
                validate()
            if step % v.save_interval == 0 or step >= v.max_steps:
                manifest, saved_step = save() or manifest, step
            if step >= v.max_steps:
                break
        else:
            order.next_epoch()
    if saved_step != step or (not resuming and steps_run == 0):  # (stopped by epochs: its val loss is stale)
        if rank == 0:
            validate()
        manifest = save() or manifest
    if writer is not None:
        writer.close()
    logger.info("run %s: step %d, val mel L1 %s (%d steps in %.1f s)", run_id, step, val_loss, steps_run,
                time.perf_counter() - started)
    if world > 1:
        dist.barrier()
    return TrainResult(run_id, step, order.epoch, manifest if rank == 0 else None, val_loss, model)


def main(argv: Optional[list[str]] = None) -> None:
    from tasks.training.launch import trainer_main

    trainer_main("Train HiFi-VC on the ingested clips with the asr stage's content encoder.", train, argv)


if __name__ == "__main__":
    main()

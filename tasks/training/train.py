"""The Bert-VITS2 trainer: upstream 2.3's recipe (`train_ms.py`), one loop you can read top to bottom.

    python -m tasks.training.train --params params.yaml                               # one process
    torchrun --nproc_per_node 2 -m tasks.training.train --params params.yaml          # DDP: nccl on CUDA, gloo on CPU

(`vitsflow train` runs one of the two, as params.train.nproc says, inside the Prefect flow `train`.)

What a step does, as upstream 2.3:
  1. G forward on the batch: MAS alignment (noise-scaled, annealed by step), duration losses, a
     random `segment_size` slice of z decoded to audio;
  2. the duration discriminator (DUR), then the WavLM discriminator (WD, only with a WavLM model in
     params.model.slm.model), then the multi-period discriminator (D) take one step each on real
     vs detached generated data;
  3. G takes one step on mel L1 * c_mel + KL * c_kl + duration + adversarial + feature matching
     (+ DUR adversarial, + WavLM feature and adversarial terms).
Four AdamW optimizers with an ExponentialLR each (stepped once per epoch, as upstream). bf16 is
opt-in autocast (no GradScaler: bfloat16 needs none); losses and mels are computed in float32.

Checkpoints go through tasks.core.checkpoints.CheckpointStore to `runs/<run_id>/` of params.storage.
The run id is a hash of the model and train params (minus how-only knobs such as max_steps and
intervals) and of the data, so running the same params on the same data again resumes: the nets,
the optimizers, the schedulers, the step, the sampler's position in its epoch and the RNG state of
every rank are restored, and the losses continue exactly as an uninterrupted run's would (tested on
CPU). Validation is teacher-forced reconstruction (posterior encoder -> decoder) mel L1 on the val
split; it draws its noise from a forked RNG so it never changes what training sees, and it is the
`val_loss` by which the best checkpoints are kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from model import commons
from model.losses import WavLMLoss, discriminator_loss, feature_loss, generator_loss, kl_loss
from model.mel_processing import STFTParams, mel_spectrogram, spec_to_mel
from model.models import VARIANTS, build_discriminators, build_generator
from model.upstream import load_state_dict_strict, read_checkpoint
from tasks.core.checkpoints import CheckpointStore, all_rng_states, lineage, set_rng_state
from tasks.core.config import ModelConfig, Params, resolve_local, resolve_model_path
from tasks.core.paths import DATA_DIRS
from tasks.core.storage import open_storage, storage_from_config
from tasks.frontends.symbols import SymbolTable
from tasks.prep.spec import stft_params
from tasks.training.corpus import BucketSampler, Corpus, TextAudioDataset, collate

logger = logging.getLogger("vitsflow.train")

# Train params that change how a run goes, not what it computes: left out of the run id, so that
# raising max_steps or changing an interval continues the same run.
HOW_ONLY = {"max_steps", "epochs", "log_interval", "eval_interval", "save_interval", "keep_best", "num_workers",
            "device", "val_max_utterances", "audio_samples", "run_id", "log_dir"}
LOSS_KEYS = ["g/total", "g/mel", "g/kl", "g/dur", "g/gen", "g/fm", "g/dur_gen", "g/lm", "g/lm_gen",
             "d/total", "d/dur", "d/wd", "grad_norm/g", "grad_norm/d"]


@dataclass
class TrainResult:
    run_id: str
    step: int
    epoch: int
    manifest: Optional[dict]  # the last checkpoint's manifest (rank 0; None elsewhere)
    val_loss: Optional[float] = None
    nets: dict[str, nn.Module] = field(default_factory=dict)  # unwrapped, for tests and benchmarks


# ----------------------------------------------------------------------------- run identity


def data_hash(root: Path) -> str:
    """sha256 over the small index/meta files of the four data stages (their content hashes cover the shards)."""
    h = hashlib.sha256()
    for key, rel in DATA_DIRS.items():
        folder = resolve_local(root, rel)
        names = ["index.jsonl", "meta.json", "symbols.json"] + sorted(p.name for p in folder.glob("text-*.jsonl"))
        for name in names:
            path = folder / name
            if path.is_file():
                h.update(f"{key}/{name}\0".encode())
                h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def run_id_for(params: Params, root: Path) -> str:
    if params.train.run_id:
        return params.train.run_id
    what = {"model": params.model.model_dump(mode="json"),
            "train": params.train.model_dump(mode="json", exclude=HOW_ONLY),
            "spec": params.features.spec.model_dump(mode="json"), "data": data_hash(root)}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    return f"{params.model.variant}-{digest[:12]}"


# ----------------------------------------------------------------------------- networks


def generator(m: ModelConfig, symbols: SymbolTable, n_speakers: int, bert_dim: int, n_fft: int,
              segment_frames: int) -> nn.Module:
    """The generator for a symbol table, speakers and BERT width (the one construction: training,
    resumed checkpoints and synthesis). `segment_frames` only shapes training slices, not weights;
    a variant without BERT inputs keeps upstream's 1024-wide projections."""
    return build_generator(m.variant, n_vocab=len(symbols.symbols), spec_channels=n_fft // 2 + 1,
                           segment_size=segment_frames, n_speakers=n_speakers, num_tones=symbols.num_tones,
                           num_languages=len(symbols.language_ids),
                           bert_dim=bert_dim if VARIANTS[m.variant]["use_bert"] else 1024, **m.generator_kwargs())


def build_nets(params: Params, corpus: Corpus) -> dict[str, nn.Module]:
    """G, D and (per variant) DUR, and WD when a WavLM model is configured; table sizes from the data."""
    m, spec = params.model, params.features.spec
    g = generator(m, corpus.symbols, len(corpus.speakers), corpus.bert_dim, spec.n_fft,
                  params.train.segment_size // spec.hop_length)
    nets = {"G": g, **build_discriminators(m.variant, m.hidden_channels, m.gin_channels, m.use_spectral_norm,
                                           m.slm.model_dump(), m.disc_divisor)}
    if m.slm.model is None:
        nets.pop("WD", None)  # no WavLM, no WavLM discriminator
    elif "WD" not in nets:
        raise ValueError(f"model.slm.model: the WavLM terms are part of bert-vits2-2.3, not of {m.variant!r}")
    return nets


def _matches(key: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(key, p) or fnmatchcase(key, p + ".*") for p in patterns)


def _local_copy(uri: str, root: Path, params: Params) -> tuple[Path, Optional[Path]]:
    """A local path for a checkpoint given as a path or s3:// URI (downloaded to a temp file)."""
    if not uri.startswith("s3://"):
        return resolve_local(root, uri), None
    folder, _, name = uri.rpartition("/")
    storage = open_storage(folder, root, params.storage.endpoint_url, params.storage.region)
    fd, tmp = tempfile.mkstemp(suffix=".pth")
    with os.fdopen(fd, "wb") as f:
        f.write(storage.read_bytes(name))
    return Path(tmp), Path(tmp)


def init_from_upstream(nets: dict[str, nn.Module], params: Params, root: Path) -> dict[str, Any]:
    """Load upstream G/D/DUR/WD checkpoints (fine-tuning) strictly, except what the allow-lists
    name: tables whose first dimension may differ (new speakers, symbols, tones, languages) and
    keys to re-initialise. Every difference is logged. Returns {net: LoadReport}."""
    cfg = params.train.init_from
    reports = {}
    for name, net in nets.items():
        uri = getattr(cfg, name, None)
        if uri is None:
            continue
        path, tmp = _local_copy(uri, root, params)
        try:
            sd = read_checkpoint(path)["model"]
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        dropped = [k for k in sd if _matches(k, cfg.reinit)]
        sd = {k: v for k, v in sd.items() if k not in dropped}
        if dropped:
            logger.warning("init %s: re-initialising %d keys matching %s: %s", name, len(dropped), cfg.reinit,
                           ", ".join(dropped[:8]) + (" ..." if len(dropped) > 8 else ""))
        report = load_state_dict_strict(net, sd, allow_resize=cfg.allow_resize, allow_missing=cfg.reinit)
        for key, (old, new) in report.resized.items():
            logger.warning("init %s: %s resized %s -> %s", name, key, list(old), list(new))
        logger.info("init %s from %s (%d tensors)", name, uri, len(sd))
        reports[name] = report
    return reports


def unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, DDP) else net


# ----------------------------------------------------------------------------- one step


@dataclass
class Setup:
    """Everything a training step needs."""
    nets: dict[str, nn.Module]  # possibly DDP-wrapped
    optims: dict[str, torch.optim.Optimizer]
    scheds: dict[str, torch.optim.lr_scheduler.LRScheduler]
    stft: STFTParams
    segment_size: int  # samples
    c_mel: float
    c_kl: float
    bf16: bool
    grad_clip_g: Optional[float]
    grad_clip_d: Optional[float]
    device: torch.device
    wl: Optional[WavLMLoss] = None


def build_setup(params: Params, nets: dict[str, nn.Module], device: torch.device, root: Path) -> Setup:
    """Move the nets to `device` in train mode; one AdamW + ExponentialLR per net (as upstream);
    the WavLM loss when params.model.slm.model names a WavLM."""
    cfg = params.train
    for net in nets.values():
        net.to(device).train()
    optims = {name: torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], cfg.learning_rate,
                                      betas=cfg.betas, eps=cfg.eps) for name, net in nets.items()}
    scheds = {name: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay) for name, opt in optims.items()}
    wl = None
    if params.model.slm.model is not None:
        from transformers import AutoModel

        wavlm = AutoModel.from_pretrained(resolve_model_path(root, params.model.slm.model)).to(device)
        wl = WavLMLoss(wavlm, nets["WD"], params.audio.sample_rate, params.model.slm.sr).to(device)
    stft = stft_params(params)
    return Setup(dict(nets), optims, scheds, stft, cfg.segment_size, cfg.c_mel, cfg.c_kl, cfg.bf16,
                 cfg.grad_clip_g, cfg.grad_clip_d, device, wl)


def _backward_step(loss: torch.Tensor, net: nn.Module, optim: torch.optim.Optimizer,
                   max_norm: Optional[float]) -> torch.Tensor:
    """zero_grad, backward, clip to max_norm (or only measure the norm, as upstream), step."""
    optim.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in net.parameters() if p.grad is not None]
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    optim.step()
    return norm


def train_step(s: Setup, batch: dict[str, Any], step: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One step of every network on one batch. Returns (losses, tensors for the TensorBoard images)."""
    net_g, net_d = s.nets["G"], s.nets["D"]
    net_dur, net_wd = s.nets.get("DUR"), s.nets.get("WD")
    hop = s.stft.hop_length
    unwrap(net_g).update_mas_noise_scale(step)  # VITS2: 0.01 - 2e-6 * step, floored at 0
    autocast = torch.autocast(device_type=s.device.type, dtype=torch.bfloat16, enabled=s.bf16)
    fp32 = torch.autocast(device_type=s.device.type, enabled=False)
    b = batch
    with autocast:
        (y_hat, l_length, attn, ids_slice, x_mask, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q),
         (hidden_x, logw, logw_, logw_sdp), g) = net_g(b["phones"], b["x_lengths"], b["spec"], b["spec_lengths"],
                                                       b["sid"], b["tones"], b["langs"], b.get("bert"),
                                                       b.get("ja_bert"), b.get("en_bert"))
        with fp32:  # the one STFT (model/mel_processing.py), in float32 whatever the autocast
            mel = spec_to_mel(b["spec"].float(), s.stft)
            y_mel = commons.slice_segments(mel, ids_slice, s.segment_size // hop)
            y_hat_mel = mel_spectrogram(y_hat.squeeze(1).float(), s.stft)
        y = commons.slice_segments(b["wav"], ids_slice * hop, s.segment_size)

        # --- discriminators, on detached generator outputs
        y_d_hat_r, y_d_hat_g, _, _ = net_d(y, y_hat.detach())
        loss_disc, _, _ = discriminator_loss(y_d_hat_r, y_d_hat_g)
    zero = torch.zeros((), device=s.device)
    losses = {"d/dur": zero, "d/wd": zero, "g/dur_gen": zero, "g/lm": zero, "g/lm_gen": zero}
    if net_dur is not None:
        with autocast:
            # Upstream 2.3 judges the deterministic and the sampled (SDP) durations and sums the two
            # probability maps; its LSGAN loss then iterates over the [B, T_x, 1] tensors, i.e. over
            # batch items (mean per item, summed over the batch). Kept as is.
            r, gen = net_dur(hidden_x.detach(), x_mask.detach(), logw_.detach(), logw.detach(), g.detach())
            r_sdp, gen_sdp = net_dur(hidden_x.detach(), x_mask.detach(), logw_.detach(), logw_sdp.detach(), g.detach())
            loss_dur_disc, _, _ = discriminator_loss(r + r_sdp, gen + gen_sdp)
        losses["d/dur"] = loss_dur_disc
        _backward_step(loss_dur_disc, net_dur, s.optims["DUR"], s.grad_clip_d)
    if net_wd is not None:
        with autocast:
            loss_slm = s.wl.discriminator(y.detach().squeeze(1), y_hat.detach().squeeze(1)).mean()
        losses["d/wd"] = loss_slm
        _backward_step(loss_slm, net_wd, s.optims["WD"], s.grad_clip_d)
    grad_norm_d = _backward_step(loss_disc, net_d, s.optims["D"], s.grad_clip_d)

    # --- generator
    with autocast:
        _, y_d_hat_g, fmap_r, fmap_g = net_d(y, y_hat)
        if net_dur is not None:
            _, dur_g = net_dur(hidden_x, x_mask, logw_, logw, g)
            _, dur_g_sdp = net_dur(hidden_x, x_mask, logw_, logw_sdp, g)
        with fp32:
            loss_dur = torch.sum(l_length.float())
            loss_mel = F.l1_loss(y_mel, y_hat_mel) * s.c_mel
            loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * s.c_kl
            loss_fm = feature_loss(fmap_r, fmap_g)
            loss_gen, _ = generator_loss(y_d_hat_g)
            loss_gen_all = loss_gen + loss_fm + loss_mel + loss_dur + loss_kl
            if net_dur is not None:
                losses["g/dur_gen"], _ = generator_loss(dur_g + dur_g_sdp)
                loss_gen_all = loss_gen_all + losses["g/dur_gen"]
        if s.wl is not None:
            losses["g/lm"] = s.wl(y.detach().squeeze(1), y_hat.squeeze(1)).mean()
            losses["g/lm_gen"] = s.wl.generator(y_hat.squeeze(1))
            loss_gen_all = loss_gen_all + losses["g/lm"] + losses["g/lm_gen"]
    grad_norm_g = _backward_step(loss_gen_all, net_g, s.optims["G"], s.grad_clip_g)
    losses.update({"g/total": loss_gen_all, "g/mel": loss_mel, "g/kl": loss_kl, "g/dur": loss_dur,
                   "g/gen": loss_gen, "g/fm": loss_fm, "d/total": loss_disc,
                   "grad_norm/g": grad_norm_g, "grad_norm/d": grad_norm_d})
    images = {"slice/mel_org": y_mel[0], "slice/mel_gen": y_hat_mel[0], "all/mel": mel[0], "all/attn": attn[0, 0]}
    return losses, images


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validation_mel_l1(net_g: nn.Module, loader: DataLoader, stft: STFTParams, device: torch.device, samples: int = 0,
             seed: int = 0) -> tuple[Optional[float], dict[str, torch.Tensor]]:
    """Teacher-forced reconstruction mel L1 over the val clips (batch 1): posterior encoder on the
    real spectrogram, decoder on its z, log-mel of the result against the real one. Noise comes
    from a forked, fixed-seed RNG: the value is comparable across evaluations and training's RNG
    stream is untouched. Also returns audio for the first `samples` clips (reconstruction and
    synthesis with sdp_ratio 0 and 1, as upstream's evaluate)."""
    g = unwrap(net_g)
    was_training = g.training
    g.eval()
    total, count, audio = 0.0, 0, {}
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i, batch in enumerate(loader):
            b = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            spk = g._speaker(b["sid"], b["spec"])
            z, _, _, y_mask = g.enc_q(b["spec"], b["spec_lengths"], g=spk)
            y_hat = g.dec(z * y_mask, g=spk)
            mel = spec_to_mel(b["spec"], stft)
            mel_hat = mel_spectrogram(y_hat.squeeze(1).float(), stft)
            frames = min(mel.shape[-1], mel_hat.shape[-1])
            total += F.l1_loss(mel_hat[..., :frames], mel[..., :frames]).item()
            count += 1
            if i < samples:
                audio[f"gt/audio_{i}"] = b["wav"][0, :, : int(b["wav_lengths"][0])]
                audio[f"rec/audio_{i}"] = y_hat[0]
                for sdp_ratio in (0.0, 1.0):
                    o, _, mask, _ = g.infer(b["phones"], b["x_lengths"], b["sid"], b["tones"], b["langs"],
                                            b.get("bert"), b.get("ja_bert"), b.get("en_bert"), y=b["spec"],
                                            max_len=1000, sdp_ratio=sdp_ratio)
                    audio[f"gen/audio_{i}_sdp{sdp_ratio:g}"] = o[0, :, : int(mask.sum()) * stft.hop_length]
    g.train(was_training)
    return (total / count if count else None), audio


def _image(x: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """A [H, W] map scaled to [0, 1] for TensorBoard (low frequencies at the bottom)."""
    x = x.detach().float().cpu()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    return x.flip(0) if flip else x


# ----------------------------------------------------------------------------- the loop


def _setup_distributed(cfg) -> tuple[int, int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True  # as upstream
        torch.backends.cudnn.allow_tf32 = True
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        if not use_cuda:  # share the cores between the processes of this machine
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        return dist.get_rank(), world, local_rank, device
    return 0, 1, local_rank, device


@dataclass
class Run:
    """What the loop carries from step to step, besides nets, optimizers and sampler."""
    id: str
    step: int = 0
    losses: dict[str, float] = field(default_factory=dict)  # the last step's {LOSS_KEYS}
    val_loss: Optional[float] = None
    val_step: Optional[int] = None  # the step val_loss belongs to
    manifest: Optional[dict] = None  # the last saved checkpoint's (rank 0)
    saved_step: Optional[int] = None


def make_loaders(params: Params, corpus: Corpus, rank: int, world: int, device: torch.device):
    """(train loader, its resumable bucket sampler, val loader or None on ranks > 0 / no val clips)."""
    cfg = params.train
    use_bert = VARIANTS[params.model.variant]["use_bert"]
    train_set = TextAudioDataset(corpus, "train", params.model.add_blank, use_bert)
    sampler = BucketSampler(train_set.lengths, cfg.batch_size, cfg.bucket_boundaries, world, rank, cfg.seed,
                            ids=train_set.ids)
    # Its own generator: iter(DataLoader) otherwise draws a worker seed from the global RNG, and a
    # resumed run (which starts an iterator mid-epoch) would drift from an uninterrupted one.
    # Workers are spawned, not forked (a fork of a process running Prefect's threads dies on
    # shutdown), and kept for the whole run, so their start-up is paid once.
    workers = dict(num_workers=cfg.num_workers, persistent_workers=True, multiprocessing_context="spawn") \
        if cfg.num_workers > 0 else {}
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed), **workers)
    val_loader = None
    if rank == 0:
        val_set = TextAudioDataset(corpus, "val", params.model.add_blank, use_bert, limit=cfg.val_max_utterances)
        if len(val_set):
            val_loader = DataLoader(val_set, batch_size=1, collate_fn=collate)
        else:
            logger.warning("no validation clips: val_loss is not computed and only the latest checkpoint is kept")
    logger.info("%d train clips in %d batches per epoch per process, %d processes, %s", len(train_set),
                len(sampler), world, device)
    return loader, sampler, val_loader


def resume(run: Run, store: CheckpointStore, setup: Setup, sampler: BucketSampler, seed: int, rank: int,
           world: int) -> None:
    """Nets, optimizers, schedulers, sampler position, step and this rank's RNG from the latest checkpoint."""
    saved_nets, state, run.manifest = store.load()
    for name, net in setup.nets.items():
        net.load_state_dict(saved_nets[name], strict=True)
    for name in setup.optims:
        setup.optims[name].load_state_dict(state["optimizers"][name])
        setup.scheds[name].load_state_dict(state["schedulers"][name])
    sampler.load_state_dict(state["sampler"])
    run.step = run.saved_step = int(state["step"])
    if len(state["rng"]) == world:
        set_rng_state(state["rng"][rank])
    else:
        logger.warning("checkpoint has RNG states of %d processes, this run has %d: reseeding", len(state["rng"]), world)
        torch.manual_seed(seed + rank + run.step)
    logger.info("resumed run %s at step %d (epoch %d, batch %d of %d)", run.id, run.step, sampler.epoch,
                sampler.position, len(sampler))


def wrap_ddp(setup: Setup, local_rank: int) -> None:
    """DDP-wrap the nets (after loading: DDP broadcasts rank 0's parameters when it wraps)."""
    device = setup.device
    setup.nets = {name: DDP(net, device_ids=[local_rank] if device.type == "cuda" else None,
                            find_unused_parameters=(name == "DUR")) for name, net in setup.nets.items()}
    if setup.wl is not None:
        setup.wl.wd = setup.nets["WD"]


def validate(run: Run, setup: Setup, val_loader: Optional[DataLoader], writer, cfg, sample_rate: int) -> None:
    """val_loss at this step (once per step; only rank 0 has a val loader), to TensorBoard with audio."""
    if val_loader is None or run.val_step == run.step:
        return
    run.val_step = run.step
    run.val_loss, audio = validation_mel_l1(setup.nets["G"], val_loader, setup.stft, setup.device,
                                            cfg.audio_samples, cfg.seed)
    writer.add_scalar("val/mel_l1", run.val_loss, run.step)
    for tag, wav in audio.items():
        writer.add_audio(tag, wav.float().clamp(-1, 1).cpu(), run.step, sample_rate=sample_rate)
    logger.info("step %d: val mel L1 %.4f", run.step, run.val_loss)


def save_checkpoint(run: Run, store: CheckpointStore, setup: Setup, sampler: BucketSampler, corpus: Corpus,
                    params: Params, run_lineage: dict, rank: int, world: int) -> None:
    """A checkpoint bundle of every net and the whole loop state (every rank's RNG gathered to rank 0)."""
    rngs = all_rng_states(world)
    if rank == 0:
        state = {"step": run.step, "epoch": sampler.epoch, "sampler": sampler.state_dict(),
                 "optimizers": {k: o.state_dict() for k, o in setup.optims.items()},
                 "schedulers": {k: s.state_dict() for k, s in setup.scheds.items()},
                 "rng": rngs, "world_size": world, "speakers": list(corpus.speakers),
                 "symbols": corpus.symbols.to_json(), "frontends": corpus.frontends,
                 "model": params.model.model_dump(mode="json"),
                 "sample_rate": params.audio.sample_rate, "stft": dict(vars(setup.stft))}
        metrics = {"val_loss": run.val_loss, "epoch": sampler.epoch,
                   **{k: run.losses[k] for k in ("g/total", "g/mel", "d/total") if run.losses}}
        run.manifest = store.save(run.step, {k: unwrap(n).state_dict() for k, n in setup.nets.items()}, state,
                                  metrics, run_lineage, keep_best=params.train.keep_best)
    run.saved_step = run.step


def log_step(writer, run: Run, setup: Setup, images: dict[str, torch.Tensor], epoch: int, rate: float) -> None:
    for k, v in run.losses.items():
        writer.add_scalar(f"loss/{k}" if not k.startswith("grad") else k, v, run.step)
    for name, opt in setup.optims.items():
        writer.add_scalar(f"learning_rate/{name}", opt.param_groups[0]["lr"], run.step)
    for tag, img in images.items():
        writer.add_image(tag, _image(img, flip=tag != "all/attn"), run.step, dataformats="HW")
    losses = run.losses
    logger.info("step %d epoch %d: g %.3f (mel %.3f kl %.3f dur %.3f) d %.3f, %.2f steps/s", run.step, epoch,
                losses["g/total"], losses["g/mel"], losses["g/kl"], losses["g/dur"], losses["d/total"], rate)


def end_epoch(setup: Setup, sampler: BucketSampler) -> None:
    with warnings.catch_warnings():  # resumed at an epoch's end, no optimizer has stepped yet here
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        for sched in setup.scheds.values():
            sched.step()
    sampler.set_epoch(sampler.epoch + 1)


def train(params: Params, root: Path, on_step: Optional[Callable[[dict[str, float]], None]] = None) -> TrainResult:
    """Train (or resume) the run these params and this data define, until max_steps or epochs.
    `on_step` receives each step's losses ({"step", *LOSS_KEYS}); nothing else keeps them."""
    cfg, root = params.train, Path(root)
    rank, world, local_rank, device = _setup_distributed(cfg)
    run = Run(run_id_for(params, root))
    max_steps = cfg.max_steps if cfg.max_steps is not None else math.inf
    corpus = Corpus.open(**{k: resolve_local(root, v) for k, v in DATA_DIRS.items()})
    loader, sampler, val_loader = make_loaders(params, corpus, rank, world, device)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    nets = build_nets(params, corpus)
    store = CheckpointStore(storage_from_config(params.storage, root), run.id)  # (VITSFLOW_STORAGE_URI overrides)
    resuming = store.latest() is not None
    if not resuming:
        init_from_upstream(nets, params, root)
    setup = build_setup(params, nets, device, root)
    if corpus.stft != setup.stft:
        raise ValueError(f"data/spec was made with {corpus.stft}; params (audio.sample_rate, features.spec) "
                         f"say {setup.stft}: re-run the spec stage")
    torch.manual_seed(cfg.seed + rank)  # a fresh run's training noise differs per rank
    if resuming:
        resume(run, store, setup, sampler, cfg.seed, rank, world)
    else:
        logger.info("new run %s", run.id)
    if world > 1:
        wrap_ddp(setup, local_rank)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(resolve_local(root, cfg.log_dir) / run.id))
    run_lineage = lineage(root)

    started, steps_run, frames_run = time.perf_counter(), 0, 0
    while run.step < max_steps and sampler.epoch < cfg.epochs:
        for batch in loader:  # this epoch's batches, from the sampler's position on
            frames_run += int(batch["spec_lengths"].sum())
            batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            losses, images = train_step(setup, batch, run.step)
            sampler.advance()
            run.step += 1
            steps_run += 1
            run.losses = dict(zip(LOSS_KEYS, torch.stack([losses[k].detach().float() for k in LOSS_KEYS]).tolist()))
            if on_step is not None:
                on_step({"step": run.step, **run.losses})
            if rank == 0 and run.step % cfg.log_interval == 0:
                log_step(writer, run, setup, images, sampler.epoch, steps_run / (time.perf_counter() - started))
            if run.step % cfg.eval_interval == 0 or run.step % cfg.save_interval == 0:
                validate(run, setup, val_loader, writer, cfg, params.audio.sample_rate)  # (a checkpoint carries it)
            if run.step % cfg.save_interval == 0:
                save_checkpoint(run, store, setup, sampler, corpus, params, run_lineage, rank, world)
            if run.step >= max_steps:
                break
        else:  # the epoch ran to its end (not stopped by max_steps)
            end_epoch(setup, sampler)
    if run.saved_step != run.step:
        validate(run, setup, val_loader, writer, cfg, params.audio.sample_rate)
        save_checkpoint(run, store, setup, sampler, corpus, params, run_lineage, rank, world)

    seconds = max(time.perf_counter() - started, 1e-9)
    if writer is not None:
        writer.add_scalar("throughput/steps_per_s", steps_run / seconds, run.step)
        writer.add_scalar("throughput/frames_per_s", frames_run / seconds, run.step)
        writer.close()
    logger.info("run %s: step %d, epoch %d, val_loss %s (%d steps in %.1f s)", run.id, run.step, sampler.epoch,
                run.val_loss, steps_run, seconds)
    result = TrainResult(run.id, run.step, sampler.epoch, run.manifest if rank == 0 else None, run.val_loss,
                         {k: unwrap(n) for k, n in setup.nets.items()})
    if world > 1:
        dist.barrier()
    return result


def main(argv: Optional[list[str]] = None) -> None:
    from tasks.training.launch import trainer_main

    trainer_main("Train Bert-VITS2 on the preprocessed data (one process or torchrun).", train, argv)


if __name__ == "__main__":
    main()

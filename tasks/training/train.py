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

import argparse
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
from typing import Any, Optional

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
from tasks.core.checkpoints import CheckpointStore, lineage, rng_state, set_rng_state
from tasks.core.config import ModelConfig, Params, find_repo_root, load_params, resolve_local, resolve_model_path
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
    history: list[dict[str, float]] = field(default_factory=list)  # per step this call ran: {"step", *LOSS_KEYS}
    val_loss: Optional[float] = None
    nets: dict[str, nn.Module] = field(default_factory=dict)  # unwrapped, for tests and benchmarks


# ----------------------------------------------------------------------------- run identity


def data_fingerprint(root: Path) -> str:
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
            "spec": params.features.spec.model_dump(mode="json"), "data": data_fingerprint(root)}
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


def train(params: Params, root: Path) -> TrainResult:
    """Train (or resume) the run these params and this data define, until max_steps or epochs."""
    cfg, root = params.train, Path(root)
    rank, world, local_rank, device = _setup_distributed(cfg)
    run_id = run_id_for(params, root)
    max_steps = cfg.max_steps if cfg.max_steps is not None else math.inf

    # --- data
    corpus = Corpus.open(**{k: resolve_local(root, v) for k, v in DATA_DIRS.items()})
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

    # --- networks, optimizers, schedulers (same init on every rank: seeded before building)
    torch.manual_seed(cfg.seed)
    nets = build_nets(params, corpus)
    store = CheckpointStore(storage_from_config(params.storage, root), run_id)  # (VITSFLOW_STORAGE_URI overrides)
    manifest = store.latest()
    if manifest is None:
        init_from_upstream(nets, params, root)
    setup = build_setup(params, nets, device, root)
    optims, scheds, stft = setup.optims, setup.scheds, setup.stft
    if corpus.stft != stft:
        raise ValueError(f"data/spec was made with {corpus.stft}; params (audio.sample_rate, features.spec) "
                         f"say {stft}: re-run the spec stage")

    step = 0
    torch.manual_seed(cfg.seed + rank)  # a fresh run's training noise differs per rank
    if manifest is not None:  # resume exactly where the last checkpoint left off
        saved_nets, state, manifest = store.load()
        for name, net in nets.items():
            net.load_state_dict(saved_nets[name], strict=True)
        for name in optims:
            optims[name].load_state_dict(state["optimizers"][name])
            scheds[name].load_state_dict(state["schedulers"][name])
        sampler.load_state_dict(state["sampler"])
        step = int(state["step"])
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])
        else:
            logger.warning("checkpoint has RNG states of %d processes, this run has %d: reseeding",
                           len(state["rng"]), world)
            torch.manual_seed(cfg.seed + rank + step)
        logger.info("resumed run %s at step %d (epoch %d, batch %d of %d)", run_id, step, sampler.epoch,
                    sampler.position, len(sampler))
    else:
        logger.info("new run %s: %d train clips in %d batches per epoch per process, %d processes, %s",
                    run_id, len(train_set), len(sampler), world, device)
    if world > 1:  # after loading: DDP broadcasts rank 0's parameters when it wraps
        nets = {name: DDP(net, device_ids=[local_rank] if device.type == "cuda" else None,
                          find_unused_parameters=(name == "DUR")) for name, net in nets.items()}
        setup.nets = nets
        if setup.wl is not None:
            setup.wl.wd = nets["WD"]

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(resolve_local(root, cfg.log_dir) / run_id))
    run_lineage = lineage(root)
    history: list[dict[str, float]] = []
    val_loss: Optional[float] = None
    val_step: Optional[int] = None  # the step val_loss belongs to
    last_saved = step if manifest is not None else None

    def save() -> None:
        nonlocal manifest, last_saved
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if rank == 0:
            state = {"step": step, "epoch": sampler.epoch, "sampler": sampler.state_dict(),
                     "optimizers": {k: o.state_dict() for k, o in optims.items()},
                     "schedulers": {k: s.state_dict() for k, s in scheds.items()},
                     "rng": rngs, "world_size": world, "speakers": list(corpus.speakers),
                     "symbols": corpus.symbols.to_json(), "frontends": corpus.frontends,
                     "model": params.model.model_dump(mode="json"),
                     "sample_rate": params.audio.sample_rate, "stft": dict(vars(stft))}
            metrics = {"val_loss": val_loss, "epoch": sampler.epoch,
                       **{k: history[-1][k] for k in ("g/total", "g/mel", "d/total") if history}}
            manifest = store.save(step, {k: unwrap(n).state_dict() for k, n in nets.items()}, state, metrics,
                                  run_lineage, keep_best=cfg.keep_best)
        last_saved = step

    def validate() -> None:
        nonlocal val_loss, val_step
        if rank != 0 or val_loader is None or val_step == step:
            return
        val_step = step
        val_loss, audio = validation_mel_l1(nets["G"], val_loader, stft, device, cfg.audio_samples, cfg.seed)
        writer.add_scalar("val/mel_l1", val_loss, step)
        for tag, wav in audio.items():
            writer.add_audio(tag, wav.float().clamp(-1, 1).cpu(), step, sample_rate=params.audio.sample_rate)
        logger.info("step %d: val mel L1 %.4f", step, val_loss)

    started, steps_run, frames_run = time.perf_counter(), 0, 0
    while step < max_steps and sampler.epoch < cfg.epochs:
        for batch in loader:  # this epoch's batches, from the sampler's position on
            frames_run += int(batch["spec_lengths"].sum())
            batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            losses, images = train_step(setup, batch, step)
            sampler.advance()
            step += 1
            steps_run += 1
            values = torch.stack([losses[k].detach().float() for k in LOSS_KEYS]).tolist()  # one sync a step
            history.append({"step": step, **dict(zip(LOSS_KEYS, values))})
            if rank == 0 and step % cfg.log_interval == 0:
                for k, v in history[-1].items():
                    if k != "step":
                        writer.add_scalar(f"loss/{k}" if not k.startswith("grad") else k, v, step)
                for name, opt in optims.items():
                    writer.add_scalar(f"learning_rate/{name}", opt.param_groups[0]["lr"], step)
                for tag, img in images.items():
                    writer.add_image(tag, _image(img, flip=tag != "all/attn"), step, dataformats="HW")
                rate = steps_run / (time.perf_counter() - started)
                logger.info("step %d epoch %d: g %.3f (mel %.3f kl %.3f dur %.3f) d %.3f, %.2f steps/s",
                            step, sampler.epoch, history[-1]["g/total"], history[-1]["g/mel"],
                            history[-1]["g/kl"], history[-1]["g/dur"], history[-1]["d/total"], rate)
            if step % cfg.eval_interval == 0:
                validate()
            if step % cfg.save_interval == 0:
                validate()  # (once a step) every checkpoint carries its val_loss, for best-N retention
                save()
            if step >= max_steps:
                break
        else:  # the epoch ran to its end (not stopped by max_steps)
            with warnings.catch_warnings():  # resumed at an epoch's end, no optimizer has stepped yet here
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                for sched in scheds.values():
                    sched.step()
            sampler.set_epoch(sampler.epoch + 1)
    if last_saved != step:
        validate()
        save()
    if writer is not None:
        writer.add_scalar("throughput/steps_per_s", steps_run / max(time.perf_counter() - started, 1e-9), step)
        writer.add_scalar("throughput/frames_per_s", frames_run / max(time.perf_counter() - started, 1e-9), step)
        writer.close()
    logger.info("run %s: step %d, epoch %d, val_loss %s (%d steps in %.1f s)", run_id, step, sampler.epoch,
                val_loss, steps_run, time.perf_counter() - started)
    result = TrainResult(run_id, step, sampler.epoch, manifest if rank == 0 else None, history, val_loss,
                         {k: unwrap(n) for k, n in nets.items()})
    if world > 1:
        dist.barrier()
    return result


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Train Bert-VITS2 on the preprocessed data (one process or torchrun).")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s %(levelname)s: %(message)s")
    params_path = Path(args.params)
    result = train(load_params(params_path), find_repo_root(params_path))
    if dist.is_initialized():
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({"run_id": result.run_id, "step": result.step, "val_loss": result.val_loss}))


if __name__ == "__main__":
    main()

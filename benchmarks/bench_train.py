"""Training-step throughput: steps/s and spectrogram frames/s of one full step (G forward, DUR, D
and G updates: tasks.training.train.train_step), on synthetic batches of fixed shape.

    .venv/bin/python benchmarks/bench_train.py [--steps 10] [--threads N] [--bf16]

- `tiny (params.yaml)`: the repo's params.yaml model/train config (the CPU demo) on CPU;
- `upstream 2.3`: upstream's published config (192 hidden, 6 layers, 512-channel HiFi-GAN,
  full-width discriminators; 44.1 kHz, n_fft 2048, hop 512, segment 16384, batch 16, BERT 1024)
  on CUDA when there is one; prints "no GPU" otherwise.

Batches are random phones/tones/BERT features and a noise waveform with its real spectrogram: the
step's cost depends on shapes, not content. Warm-up steps (numba's MAS compile, cuDNN autotune,
allocator) are not timed; CUDA is synchronised around the timed region.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.mel_processing import linear_spectrogram  # noqa: E402
from tasks.core.config import parse_params  # noqa: E402
from tasks.frontends.symbols import SymbolTable  # noqa: E402
from tasks.training.train import build_nets, build_setup, train_step  # noqa: E402


def params_for(kind: str, bf16: bool):
    data = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    data["train"].update(bf16=bf16, num_workers=0)
    if kind == "upstream":
        data["model"] = {"variant": "bert-vits2-2.3"}  # every other key: upstream 2.3's value (ModelConfig)
        data["audio"]["sample_rate"] = 44100
        data["features"]["spec"].update(n_fft=2048, hop_length=512, win_length=2048, n_mels=128)
        data["train"].update(segment_size=16384, batch_size=16)
    return parse_params(data)


def synthetic_batch(params, frames: int, bert_dim: int, n_speakers: int, device: torch.device) -> dict:
    spec_cfg, b = params.features.spec, params.train.batch_size
    g = torch.Generator().manual_seed(0)
    hop = spec_cfg.hop_length
    wav = (torch.randn(b, 1, frames * hop, generator=g) * 0.1).clamp(-1, 1)
    from model.mel_processing import STFTParams

    stft = STFTParams(params.audio.sample_rate, spec_cfg.n_fft, hop, spec_cfg.win_length, spec_cfg.n_mels)
    spec = linear_spectrogram(wav.squeeze(1), stft)
    t_x = 2 * (frames // 6) + 1  # ~6 frames a phone, with blanks
    lengths_y = torch.full((b,), frames, dtype=torch.long)
    batch = {"phones": torch.randint(1, 100, (b, t_x), generator=g), "tones": torch.randint(0, 12, (b, t_x), generator=g),
             "langs": torch.randint(0, 3, (b, t_x), generator=g), "x_lengths": torch.full((b,), t_x, dtype=torch.long),
             "spec": spec, "spec_lengths": lengths_y, "wav": wav, "wav_lengths": lengths_y * hop,
             "sid": torch.randint(0, n_speakers, (b,), generator=g)}
    for key in ("bert", "ja_bert", "en_bert"):
        batch[key] = torch.randn(b, bert_dim, t_x, generator=g) if key == "en_bert" else torch.zeros(b, bert_dim, t_x)
    return {k: v.to(device) for k, v in batch.items()}


def bench(kind: str, device: torch.device, frames: int, steps: int, warmup: int, bf16: bool) -> str:
    params = params_for(kind, bf16)
    bert_dim = 1024 if kind == "upstream" else 384
    corpus = SimpleNamespace(symbols=SymbolTable(), speakers=[f"s{i}" for i in range(8)], bert_dim=bert_dim)
    torch.manual_seed(0)
    nets = build_nets(params, corpus)
    sizes = {k: sum(p.numel() for p in n.parameters()) / 1e6 for k, n in nets.items()}
    setup = build_setup(params, nets, device, REPO)
    batch = synthetic_batch(params, frames, bert_dim, len(corpus.speakers), device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in range(warmup):
        train_step(setup, batch, step)
    sync()
    started = time.perf_counter()
    for step in range(warmup, warmup + steps):
        losses, _ = train_step(setup, batch, step)
    sync()
    seconds = time.perf_counter() - started
    b = params.train.batch_size
    peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    return (f"{kind:9s} {device.type:4s} {'bf16' if bf16 else 'fp32'}: {steps / seconds:6.2f} steps/s, "
            f"{steps * b * frames / seconds:9.0f} frames/s  (batch {b} x {frames} frames, segment "
            f"{params.train.segment_size} samples; G {sizes['G']:.1f}M D {sizes['D']:.1f}M DUR {sizes['DUR']:.2f}M "
            f"params; threads {torch.get_num_threads()}{peak}; g/total {losses['g/total'].item():.1f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU (default: torch's)")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    ap.add_argument("--tiny-frames", type=int, default=200, help="spectrogram frames per clip, tiny config")
    ap.add_argument("--upstream-frames", type=int, default=400, help="frames per clip, upstream config (4.6 s)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}")
    print(bench("tiny", torch.device("cpu"), args.tiny_frames, args.steps, args.warmup, False))
    if args.bf16:
        print(bench("tiny", torch.device("cpu"), args.tiny_frames, args.steps, args.warmup, True))
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        print(f"GPU: {torch.cuda.get_device_name()}")
        print(bench("tiny", torch.device("cuda"), args.tiny_frames, args.steps, args.warmup, False))
        print(bench("upstream", torch.device("cuda"), args.upstream_frames, args.steps, args.warmup, False))
        if args.bf16:
            print(bench("upstream", torch.device("cuda"), args.upstream_frames, args.steps, args.warmup, True))
    else:
        print("upstream 2.3 config: no GPU (CUDA not available); skipped")


if __name__ == "__main__":
    main()

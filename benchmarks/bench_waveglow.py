"""WaveGlow speed: inference real-time factor and training steps/s against NVIDIA's own loops.

The baseline is NVIDIA/waveglow `glow.py` at 8afb643, re-typed below (same modules, same calls, same
order of operations): `WaveGlow.infer` under `torch.no_grad()` with weight norm kept (NVIDIA's
inference.py calls remove_weightnorm first; `--nvidia-removed` times that variant too), its per-flow
`torch.cat`, its W^-1 cached on the module, its `torch.jit.script`-fused gate; training is its
train.py step: forward((mel, audio)), WaveGlowLoss, backward, Adam step. Ours, on the same weights,
the same inputs, the same threads, in the same run:

* inference: `WaveGlowInference` (weight norm baked, `end` folded into the skip convs, `start`
  into the first dilated conv, the gate as one sigmoid, W^-1 once, no per-flow concatenation)
  under `torch.inference_mode()`, eager and as a `torch.jit.trace` (the TorchScript artefact
  `vitsflow export` writes);
* training: `model.waveglow.WaveGlow` + `WaveGlowLoss` (tasks/training/waveglow.py's step).

Outputs are checked equal before timing (sigma-0 audio, the first step's loss). Prints one line per
measurement and the ratios (NVIDIA's time / ours: > 1 means faster). Defaults: NVIDIA's published
config (256 channels, 12 flows, 8 layers), 22.05 kHz, 1 s of audio, NVIDIA's 16000-sample training
segments. On CUDA `--half` runs both sides in fp16 (NVIDIA's inference.py `--is_fp16`, and autocast
with a grad scaler for training as its `fp16_run`).

    python benchmarks/bench_waveglow.py [--threads 2] [--seconds 1.0] [--device cuda --half]

Measured on 2 shared CPU cores (2026-12-06, defaults, --repeats 5): inference of 1 s NVIDIA
4178 ms, ours 3257 ms eager (1.28x), 3334 ms TorchScript (1.25x), NVIDIA after remove_weightnorm
4178 ms; sigma-0 audio equal within 1.2e-7. Training step NVIDIA 8627 ms, ours 8260 ms (1.04x),
the same first loss.

2026-12-07, another host (AVX-512 EPYC, 2 cores), --repeats 9, three runs: that version 1.20x,
1.12x, 1.14x (this host's convolutions are faster, so NVIDIA's overheads weigh less); with `start`
folded and the one-sigmoid gate 1.31x, 1.38x, 1.32x eager (NVIDIA 3347/3389/3194 ms, ours
2549/2465/2421 ms), 1.34x, 1.40x, 1.36x TorchScript; sigma-0 audio within 1.6e-7. The two
changes alone, same process, 12 interleaved rounds: 1.038x (fold) and 1.097x (both) over that
version. Training step NVIDIA 7246 ms, ours 7125 ms (1.02x), the same first loss. Profile (torch
profiler, 2 calls): convolutions 90% of both sides' time (NVIDIA 6.36 s, ours 4.08 s); torch's
tanh cost 7x its sigmoid here, which the gate now avoids.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import List

import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.waveglow import WaveGlow, WaveGlowLoss  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The baseline: NVIDIA/waveglow glow.py @ 8afb643, re-typed (same modules, same calls, same
# order of operations; our own words). Only the device of the noise differs: NVIDIA allocates it
# with torch.cuda.FloatTensor(...).normal_(), here on the mel's device (as the conformance run's
# CPU patch does).


@torch.jit.script
def nv_fused_add_tanh_sigmoid_multiply(input_a, input_b, n_channels):
    n = n_channels[0]
    in_act = input_a + input_b
    return torch.tanh(in_act[:, :n, :]) * torch.sigmoid(in_act[:, n:, :])


def _weight_norm(conv: torch.nn.Conv1d) -> torch.nn.Conv1d:
    with warnings.catch_warnings():  # deprecated in favour of parametrizations; NVIDIA uses it
        warnings.simplefilter("ignore")
        return torch.nn.utils.weight_norm(conv, name="weight")


class NvInvertible1x1Conv(torch.nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = torch.nn.Conv1d(c, c, kernel_size=1, stride=1, padding=0, bias=False)
        w = torch.linalg.qr(torch.randn(c, c))[0]
        if torch.det(w) < 0:
            w[:, 0] = -w[:, 0]
        self.conv.weight.data = w.view(c, c, 1)

    def forward(self, z, reverse: bool = False):
        batch, _, n_groups = z.size()
        w = self.conv.weight.squeeze()
        if reverse:
            if not hasattr(self, "W_inverse"):  # computed once, kept forever (NVIDIA's cache)
                w_inverse = w.float().inverse()[..., None]
                if z.dtype == torch.float16:
                    w_inverse = w_inverse.half()
                self.W_inverse = w_inverse
            return F.conv1d(z, self.W_inverse, bias=None, stride=1, padding=0)
        log_det_w = batch * n_groups * torch.slogdet(w)[1]
        return self.conv(z), log_det_w


class NvWN(torch.nn.Module):
    def __init__(self, n_in_channels, n_mel_channels, n_layers, n_channels, kernel_size):
        super().__init__()
        self.n_layers, self.n_channels = n_layers, n_channels
        self.in_layers = torch.nn.ModuleList()
        self.res_skip_layers = torch.nn.ModuleList()
        self.start = _weight_norm(torch.nn.Conv1d(n_in_channels, n_channels, 1))
        end = torch.nn.Conv1d(n_channels, 2 * n_in_channels, 1)
        end.weight.data.zero_()
        end.bias.data.zero_()
        self.end = end
        self.cond_layer = _weight_norm(torch.nn.Conv1d(n_mel_channels, 2 * n_channels * n_layers, 1))
        for i in range(n_layers):
            dilation = 2 ** i
            padding = int((kernel_size * dilation - dilation) / 2)
            self.in_layers.append(_weight_norm(torch.nn.Conv1d(n_channels, 2 * n_channels, kernel_size,
                                                               dilation=dilation, padding=padding)))
            res_skip_channels = 2 * n_channels if i < n_layers - 1 else n_channels
            self.res_skip_layers.append(_weight_norm(torch.nn.Conv1d(n_channels, res_skip_channels, 1)))

    def forward(self, forward_input):
        audio, spect = forward_input
        audio = self.start(audio)
        output = torch.zeros_like(audio)
        n_channels_tensor = torch.IntTensor([self.n_channels])
        spect = self.cond_layer(spect)
        for i in range(self.n_layers):
            offset = i * 2 * self.n_channels
            acts = nv_fused_add_tanh_sigmoid_multiply(self.in_layers[i](audio),
                                                      spect[:, offset:offset + 2 * self.n_channels, :],
                                                      n_channels_tensor)
            res_skip_acts = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                audio = audio + res_skip_acts[:, :self.n_channels, :]
                output = output + res_skip_acts[:, self.n_channels:, :]
            else:
                output = output + res_skip_acts
        return self.end(output)


class NvWaveGlow(torch.nn.Module):
    def __init__(self, n_mel_channels, n_flows, n_group, n_early_every, n_early_size, WN_config):
        super().__init__()
        self.upsample = torch.nn.ConvTranspose1d(n_mel_channels, n_mel_channels, 1024, stride=256)
        self.n_flows, self.n_group = n_flows, n_group
        self.n_early_every, self.n_early_size = n_early_every, n_early_size
        self.WN = torch.nn.ModuleList()
        self.convinv = torch.nn.ModuleList()
        n_half = int(n_group / 2)
        n_remaining_channels = n_group
        for k in range(n_flows):
            if k % self.n_early_every == 0 and k > 0:
                n_half = n_half - int(self.n_early_size / 2)
                n_remaining_channels = n_remaining_channels - self.n_early_size
            self.convinv.append(NvInvertible1x1Conv(n_remaining_channels))
            self.WN.append(NvWN(n_half, n_mel_channels * n_group, **WN_config))
        self.n_remaining_channels = n_remaining_channels

    def forward(self, forward_input):
        spect, audio = forward_input
        spect = self.upsample(spect)
        assert spect.size(2) >= audio.size(1)
        if spect.size(2) > audio.size(1):
            spect = spect[:, :, :audio.size(1)]
        spect = spect.unfold(2, self.n_group, self.n_group).permute(0, 2, 1, 3)
        spect = spect.contiguous().view(spect.size(0), spect.size(1), -1).permute(0, 2, 1)
        audio = audio.unfold(1, self.n_group, self.n_group).permute(0, 2, 1)
        output_audio, log_s_list, log_det_w_list = [], [], []
        for k in range(self.n_flows):
            if k % self.n_early_every == 0 and k > 0:
                output_audio.append(audio[:, :self.n_early_size, :])
                audio = audio[:, self.n_early_size:, :]
            audio, log_det_w = self.convinv[k](audio)
            log_det_w_list.append(log_det_w)
            n_half = int(audio.size(1) / 2)
            audio_0, audio_1 = audio[:, :n_half, :], audio[:, n_half:, :]
            output = self.WN[k]((audio_0, spect))
            log_s, b = output[:, n_half:, :], output[:, :n_half, :]
            audio_1 = torch.exp(log_s) * audio_1 + b
            log_s_list.append(log_s)
            audio = torch.cat([audio_0, audio_1], 1)
        output_audio.append(audio)
        return torch.cat(output_audio, 1), log_s_list, log_det_w_list

    def infer(self, spect, sigma: float = 1.0):
        spect = self.upsample(spect)
        time_cutoff = self.upsample.kernel_size[0] - self.upsample.stride[0]
        spect = spect[:, :, :-time_cutoff]
        spect = spect.unfold(2, self.n_group, self.n_group).permute(0, 2, 1, 3)
        spect = spect.contiguous().view(spect.size(0), spect.size(1), -1).permute(0, 2, 1)
        audio = spect.new_empty(spect.size(0), self.n_remaining_channels, spect.size(2)).normal_()
        audio = sigma * audio
        for k in reversed(range(self.n_flows)):
            n_half = int(audio.size(1) / 2)
            audio_0, audio_1 = audio[:, :n_half, :], audio[:, n_half:, :]
            output = self.WN[k]((audio_0, spect))
            s, b = output[:, n_half:, :], output[:, :n_half, :]
            audio_1 = (audio_1 - b) / torch.exp(s)
            audio = torch.cat([audio_0, audio_1], 1)
            audio = self.convinv[k](audio, reverse=True)
            if k % self.n_early_every == 0 and k > 0:
                z = spect.new_empty(spect.size(0), self.n_early_size, spect.size(2)).normal_()
                audio = torch.cat((sigma * z, audio), 1)
        return audio.permute(0, 2, 1).contiguous().view(audio.size(0), -1).data


class NvWaveGlowLoss(torch.nn.Module):
    def __init__(self, sigma: float = 1.0):
        super().__init__()
        self.sigma = sigma

    def forward(self, model_output):
        z, log_s_list, log_det_w_list = model_output
        for i, log_s in enumerate(log_s_list):
            if i == 0:
                log_s_total = torch.sum(log_s)
                log_det_w_total = log_det_w_list[i]
            else:
                log_s_total = log_s_total + torch.sum(log_s)
                log_det_w_total += log_det_w_list[i]  # in place into log_det_W_list[0], as NVIDIA's
        loss = torch.sum(z * z) / (2 * self.sigma * self.sigma) - log_s_total - log_det_w_total
        return loss / (z.size(0) * z.size(1) * z.size(2))


# ---------------------------------------------------------------------------------------------
# The measurement.

NVIDIA_CONFIG = dict(n_mel_channels=80, n_flows=12, n_group=8, n_early_every=4, n_early_size=2,
                     WN_config=dict(n_layers=8, n_channels=256, kernel_size=3))


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every tensor random (NVIDIA zero-initialises `end`, which would make the coupling trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.75)
            elif "upsample" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif ".end." in name:  # small: log s near 0, so 12 flows keep the audio bounded
                p.copy_(torch.randn(p.shape, generator=g) * 1e-3)
            elif "convinv" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.03)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict, repeats: int, device: torch.device) -> dict:
    """Median seconds per call of each of `fns`, after one warm-up call each; the candidates run
    interleaved (one call of each per round), so that a slow spell of a shared machine hits all."""
    for fn in fns.values():
        fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: List[str] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0, help="audio length for inference")
    ap.add_argument("--segment", type=int, default=16000, help="training segment length (samples)")
    ap.add_argument("--batch", type=int, default=1, help="training batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--channels", type=int, default=256, help="WN_config.n_channels")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="fp16 (CUDA only)")
    ap.add_argument("--nvidia-removed", action="store_true",
                    help="also time NVIDIA's infer after its remove_weightnorm")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-inference", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.half and device.type != "cuda":
        ap.error("--half needs --device cuda")
    config = dict(NVIDIA_CONFIG, WN_config=dict(NVIDIA_CONFIG["WN_config"], n_channels=args.channels))
    ours = WaveGlow(**config)
    randomise(ours, 0)
    nvidia = NvWaveGlow(**config)
    nvidia.load_state_dict(ours.state_dict(), strict=True)
    ours.to(device).eval()
    nvidia.to(device).eval()
    print(f"device {device}{' fp16' if args.half else ''}, threads {torch.get_num_threads()}, torch "
          f"{torch.__version__}, WaveGlow {config}")

    if not args.skip_inference:
        inference(args, ours, nvidia, device)
    if not args.skip_training:
        training(args, ours, config, device)


def inference(args, ours: WaveGlow, nvidia: torch.nn.Module, device: torch.device) -> None:
    from model.waveglow import WaveGlowInference

    sr, frames = 22050, max(2, int(args.seconds * 22050 / 256))
    mel = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(1)).to(device) - 5.0
    audio_seconds = frames * 256 / sr
    fast = WaveGlowInference(ours)
    dtype = torch.float16 if args.half else torch.float32
    if args.half:
        nvidia.half()
        fast.half()
        mel = mel.half()
    sigma0 = torch.tensor(0.0, dtype=dtype, device=device)
    with torch.no_grad():
        want = nvidia.infer(mel, sigma=0.0).float()
    with torch.inference_mode():
        got = fast(mel, sigma0).float()
    with torch.no_grad():
        traced = torch.jit.trace(fast, (mel, sigma0), check_trace=False)
        got_ts = traced(mel, sigma0).float()
    print(f"inference sigma 0 worst |d| vs NVIDIA: eager {float((got - want).abs().max()):.2e}, "
          f"traced {float((got_ts - want).abs().max()):.2e} (audio peak {float(want.abs().max()):.2f})")

    def nv_infer():
        with torch.no_grad():
            nvidia.infer(mel, sigma=0.6)

    def fast_infer():
        with torch.inference_mode():
            fast(mel, torch.tensor(0.6, dtype=dtype, device=device))

    def ts_infer():
        with torch.inference_mode():
            traced(mel, torch.tensor(0.6, dtype=dtype, device=device))

    candidates = {"nvidia": nv_infer, "ours (eager)": fast_infer, "ours (torchscript)": ts_infer}
    if args.nvidia_removed:
        import copy
        removed = copy.deepcopy(nvidia)
        for wn in removed.WN:
            wn.start = torch.nn.utils.remove_weight_norm(wn.start)
            wn.cond_layer = torch.nn.utils.remove_weight_norm(wn.cond_layer)
            for i in range(len(wn.in_layers)):
                wn.in_layers[i] = torch.nn.utils.remove_weight_norm(wn.in_layers[i])
                wn.res_skip_layers[i] = torch.nn.utils.remove_weight_norm(wn.res_skip_layers[i])

        def nv_removed():
            with torch.no_grad():
                removed.infer(mel, sigma=0.6)
        candidates["nvidia (weight norm removed)"] = nv_removed
    results = timed(candidates, args.repeats, device)
    print(f"inference of {audio_seconds:.2f} s of audio (median of {args.repeats}):")
    for name, t in results.items():
        print(f"  {name:30s} {t * 1000:9.1f} ms   RTF {t / audio_seconds:.3f}   "
              f"speed-up vs NVIDIA {results['nvidia'] / t:.2f}x")



def training(args, ours: WaveGlow, config: dict, device: torch.device) -> None:
    ours.float().train()
    nvidia = NvWaveGlow(**config)
    nvidia.load_state_dict(ours.state_dict(), strict=True)
    nvidia.to(device).train()
    g = torch.Generator().manual_seed(2)
    audio = (torch.rand(args.batch, args.segment, generator=g) * 2 - 1).mul(0.3).to(device)
    from model.waveglow import mel_spectrogram
    seg_mel = mel_spectrogram(audio.cpu()).to(device)
    losses = {}

    def step_fn(model, criterion, name):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=args.half)

        def step():
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=args.half):
                loss = criterion(model((seg_mel, audio)))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.setdefault(name, loss.item())
        return step

    ours_loss, nv_loss = WaveGlowLoss(1.0), NvWaveGlowLoss(1.0)
    train = timed({"nvidia": step_fn(nvidia, nv_loss, "nvidia"), "ours": step_fn(ours, ours_loss, "ours")},
                  args.repeats, device)
    print(f"training step, batch {args.batch} x {args.segment} samples (median of {args.repeats}); "
          f"first loss: NVIDIA {losses['nvidia']:.6f}, ours {losses['ours']:.6f}:")
    for name, t in train.items():
        print(f"  {name:30s} {t * 1000:9.1f} ms   {1 / t:.3f} steps/s   "
              f"speed-up vs NVIDIA {train['nvidia'] / t:.2f}x")


if __name__ == "__main__":
    main()

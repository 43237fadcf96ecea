"""F0 extractors for the evaluation's log-F0 RMSE and V/UV: accuracy and time per call, pYIN vs CREPE.

For each real clip in tests/data/speech (LJSpeech 22.05 kHz, AISHELL-3 44.1 kHz, Common Voice ja
16 kHz), each extractor (tasks.evaluation.metrics.F0_METHODS) is run through the evaluation's own
`f0_metrics` (DTW on mel-cepstra) on two pairs whose truth is known:
- the clip vs. a copy pitched up 201.7 cents (resampled by 2**(201.7/1200), so also 11 % shorter):
  the RMSE should be 201.7 cents; the error is |RMSE - 201.7|;
- the clip vs. itself plus white noise at 30 dB SNR: the RMSE should be 0, V/UV error 0.
And on a synthetic harmonic glide (one octave per second, 110 -> 220 Hz) whose F0 is known per frame.
Time: seconds per f0_contour call on the clip (warm: the first call of each extractor is not timed),
also as a multiple of pYIN's.

    .venv/bin/python benchmarks/bench_f0.py [--clips 4] [--methods pyin crepe-tiny crepe]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

SHIFT_CENTS = 201.7


def clips(per_set: int) -> list[tuple[str, np.ndarray, int]]:
    out = []
    for name in ("en_ljspeech", "zh_aishell3", "ja_commonvoice"):
        for path in sorted((REPO / "tests" / "data" / "speech" / name / "wavs").glob("*.wav"))[:per_set]:
            wav, sr = sf.read(path, dtype="float32")
            out.append((f"{name}/{path.stem}", wav, sr))
    return out


def glide(sr: int, seconds: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(sr * seconds)) / sr
    f = 110.0 * 2.0 ** t  # one octave per second
    phase = 2 * np.pi * np.cumsum(f) / sr
    wav = sum(np.sin(k * phase) / k for k in range(1, 6)).astype(np.float32) * 0.3
    return wav, f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=4, help="clips per speech set")
    ap.add_argument("--methods", nargs="+", default=["pyin", "crepe-tiny", "crepe"])
    args = ap.parse_args()

    from tasks.evaluation.metrics import default_hop, f0_contour, f0_metrics
    from tasks.prep.audio import resample

    data = clips(args.clips)
    rng = np.random.default_rng(0)
    rows = {}
    for method in args.methods:
        f0_contour(data[0][1], data[0][2], method=method)  # warm-up: imports, weights, numba
        shift_err, noise_rmse, vuv_noise, seconds, audio_s = [], [], [], 0.0, 0.0
        for name, wav, sr in data:
            t0 = time.perf_counter()
            f0_contour(wav, sr, method=method)
            seconds += time.perf_counter() - t0
            audio_s += len(wav) / sr
            shifted = resample(wav, round(sr * 2 ** (SHIFT_CENTS / 1200)), sr)
            m = f0_metrics(wav, shifted, sr, method=method)
            shift_err.append(abs(m["f0_rmse_cents"] - SHIFT_CENTS))
            noise = rng.standard_normal(len(wav)).astype(np.float32)
            noise *= np.sqrt(np.mean(wav ** 2) / np.mean(noise ** 2) / 10 ** (30 / 10))
            m = f0_metrics(wav, wav + noise, sr, method=method)
            noise_rmse.append(m["f0_rmse_cents"])
            vuv_noise.append(m["vuv_error"])
        sr = 22050
        wav, truth = glide(sr)
        f0, voiced = f0_contour(wav, sr, method=method)
        hop = default_hop(sr)
        idx = np.arange(len(f0)) * hop
        ok = voiced & (idx < len(truth) - hop) & (idx > hop)
        glide_c = float(np.sqrt(np.mean((1200 * np.log2(f0[ok] / truth[idx[ok]])) ** 2)))
        rows[method] = dict(shift_err_median=float(np.median(shift_err)), shift_err_worst=float(np.max(shift_err)),
                            noise_rmse_median=float(np.median(noise_rmse)), noise_rmse_worst=float(np.max(noise_rmse)),
                            vuv_noise=float(np.mean(vuv_noise)), glide_cents=glide_c,
                            s_per_call=seconds / len(data), s_per_audio_s=seconds / audio_s)
        print(method, rows[method], flush=True)
    base = rows.get("pyin")
    print(f"\n{len(data)} clips ({sum(len(w) / s for _, w, s in data):.1f} s of audio), threads {os.cpu_count()}")
    print("| extractor | shift error median / worst (c) | 30 dB noise RMSE median / worst (c) | V/UV err (noise) "
          "| glide RMSE (c) | s per call | s per s of audio | time vs pYIN |")
    print("|---|---|---|---|---|---|---|---|")
    for method, r in rows.items():
        ratio = f"{r['s_per_call'] / base['s_per_call']:.1f}x" if base else "–"
        print(f"| {method} | {r['shift_err_median']:.1f} / {r['shift_err_worst']:.1f} | {r['noise_rmse_median']:.1f} / "
              f"{r['noise_rmse_worst']:.1f} | {r['vuv_noise']:.3f} | {r['glide_cents']:.1f} | {r['s_per_call']:.2f} | "
              f"{r['s_per_audio_s']:.3f} | {ratio} |")


if __name__ == "__main__":
    main()

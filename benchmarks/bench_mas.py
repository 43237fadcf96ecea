"""P5: monotonic alignment search speed. Our `maximum_path` against a serial baseline in the same run.

    .venv/bin/python benchmarks/bench_mas.py [--batch 16 --text 200 --spec 800 --repeats 30]

Baseline ("upstream serial"): upstream Bert-VITS2's algorithm as written in its
`monotonic_align/core.py`, re-typed here: a numba kernel that walks the batch one item at a time
(no parallelism), accumulating in place into a float32 copy of the whole score matrix with a
branchy inner loop, behind a wrapper as lean as ours (so the ratio is about the DP). Printed
for context: the same kernel behind upstream's own wrapper (sums over the whole mask, int32 path
cast back to float, which costs more than the DP on a small machine), our torch backend, and a
plain numpy per-item DP (rows vectorised over tokens, serial over items and frames).

Times are steady state (every function is called once first, so the JIT compile is not
counted); compile time is measured separately in fresh child processes with an empty numba
cache directory (cold: compile + write the on-disk cache) and then the same directory
(warm: what every later process pays). Every result is checked equal to ours.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.monotonic_align import maximum_path  # noqa: E402


@numba.njit(nogil=True)
def _upstream_serial_kernel(paths, values, t_ys, t_xs):
    """Upstream's core.py algorithm, one item after another."""
    max_neg_val = -1e9
    for i in range(paths.shape[0]):
        path, value, t_y, t_x = paths[i], values[i], t_ys[i], t_xs[i]
        v_prev = v_cur = 0.0
        index = t_x - 1
        for y in range(t_y):
            for x in range(max(0, t_x + y - t_y), min(t_x, y + 1)):
                v_cur = max_neg_val if x == y else value[y - 1, x]
                if x == 0:
                    v_prev = 0.0 if y == 0 else max_neg_val
                else:
                    v_prev = value[y - 1, x - 1]
                value[y, x] += max(v_prev, v_cur)
        for y in range(t_y - 1, -1, -1):
            path[y, index] = 1
            if index != 0 and (index == y or value[y - 1, index] < value[y - 1, index - 1]):
                index = index - 1


def upstream_serial(neg_cent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The baseline: upstream's kernel behind a wrapper as lean as ours (lengths from one mask
    column/row, a float32 path needing no cast), so the ratio measures the DP itself."""
    values = neg_cent.detach().cpu().numpy().astype(np.float32)  # copy: the kernel writes into it
    paths = np.zeros(values.shape, dtype=np.float32)
    t_ys = mask[:, :, 0].sum(1).to(torch.int32).cpu().numpy()
    t_xs = mask[:, 0, :].sum(1).to(torch.int32).cpu().numpy()
    _upstream_serial_kernel(paths, values, t_ys, t_xs)
    return torch.from_numpy(paths).to(device=neg_cent.device, dtype=neg_cent.dtype)


def upstream_as_shipped(neg_cent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Upstream's wrapper verbatim in behaviour: full-mask sums, int32 path cast back to float."""
    values = neg_cent.detach().cpu().numpy().astype(np.float32)
    paths = np.zeros(values.shape, dtype=np.int32)
    t_ys = mask.sum(1)[:, 0].cpu().numpy().astype(np.int32)
    t_xs = mask.sum(2)[:, 0].cpu().numpy().astype(np.int32)
    _upstream_serial_kernel(paths, values, t_ys, t_xs)
    return torch.from_numpy(paths).to(device=neg_cent.device, dtype=neg_cent.dtype)


def numpy_per_item(neg_cent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same DP in plain numpy: one item at a time, each frame's row vectorised over tokens."""
    values = neg_cent.detach().cpu().numpy().astype(np.float32)
    out = np.zeros(values.shape, dtype=np.float32)
    t_ys = mask[:, :, 0].sum(1).to(torch.int64).tolist()
    t_xs = mask[:, 0, :].sum(1).to(torch.int64).tolist()
    bad = np.float32(-1e9)
    for b, (t_y, t_x) in enumerate(zip(t_ys, t_xs)):
        v = values[b, :t_y, :t_x]
        q = np.full((t_y, t_x + 1), bad, dtype=np.float32)  # q[y, x + 1] = Q[y, x]
        q[0, 1] = v[0, 0]
        cols = np.arange(t_x)
        for y in range(1, t_y):
            stay, diag = q[y - 1, 1:], q[y - 1, :-1]
            row = v[y] + np.where(stay > diag, stay, diag)
            q[y, 1:] = np.where(cols <= y, row, bad)
        x = t_x - 1
        for y in range(t_y - 1, -1, -1):
            out[b, y, x] = 1
            if x != 0 and (x == y or q[y - 1, x + 1] < q[y - 1, x]):
                x -= 1
    return torch.from_numpy(out).to(dtype=neg_cent.dtype)


def timeit(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up: JIT compile, thread pool start
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


CHILD = r"""
import sys, time, torch
sys.path.insert(0, sys.argv[1])
B, S, T = (int(a) for a in sys.argv[2:5])
neg = -torch.rand(B, S, T) * 100
mask = torch.ones(B, S, T)
if sys.argv[5] == "ours":
    from model.monotonic_align import maximum_path as f
else:
    sys.path.insert(0, sys.argv[1] + "/benchmarks")
    from bench_mas import upstream_serial as f
t = time.perf_counter(); f(neg, mask); first = time.perf_counter() - t
t = time.perf_counter(); f(neg, mask); second = time.perf_counter() - t
print(first - second)
"""


def jit_seconds(which: str, cache_dir: str, b: int, s: int, t: int) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(b), str(s), str(t), which],
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--text", type=int, default=200)
    ap.add_argument("--spec", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    B, T, S = args.batch, args.text, args.spec

    g = torch.Generator().manual_seed(args.seed)
    neg = -torch.rand(B, S, T, generator=g) * 100  # log-likelihood-like: all negative
    mask = torch.ones(B, S, T)

    print(f"MAS benchmark: batch {B}, T_text {T}, T_spec {S}; torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} (a shared machine skews times)")
    ref = upstream_serial(neg, mask)
    runs = {
        "ours: maximum_path (numba, thread pool)": lambda: maximum_path(neg, mask),
        "ours: maximum_path (numba, 1 thread)": lambda: maximum_path(neg, mask, num_threads=1),
        "ours: maximum_path (torch backend)": lambda: maximum_path(neg, mask, backend="torch"),
        "baseline: upstream serial (numba)": lambda: upstream_serial(neg, mask),
        "upstream serial, upstream's own wrapper": lambda: upstream_as_shipped(neg, mask),
        "plain numpy per item": lambda: numpy_per_item(neg, mask),
    }
    results = {}
    for name, fn in runs.items():
        assert torch.equal(fn(), ref), f"{name} disagrees with the baseline"
        reps = args.repeats if "numpy" not in name and "torch" not in name else max(3, args.repeats // 10)
        results[name] = timeit(fn, reps)
        med, best = results[name]
        print(f"  {name:<42} median {med * 1e3:9.2f} ms   min {best * 1e3:9.2f} ms")

    ours = results["ours: maximum_path (numba, thread pool)"][0]
    base = results["baseline: upstream serial (numba)"][0]
    one = results["ours: maximum_path (numba, 1 thread)"][0]
    shipped = results["upstream serial, upstream's own wrapper"][0]
    print(f"speed-up vs upstream serial (medians): {base / ours:.2f}x  (target >= 1.5x); "
          f"single-thread kernel alone: {base / one:.2f}x; vs plain numpy: "
          f"{results['plain numpy per item'][0] / ours:.0f}x; vs upstream with its wrapper: "
          f"{shipped / ours:.1f}x")

    with tempfile.TemporaryDirectory() as cache:
        cold = jit_seconds("ours", cache, B, S, T)
        warm = jit_seconds("ours", cache, B, S, T)
    with tempfile.TemporaryDirectory() as cache:
        base_jit = jit_seconds("baseline", cache, B, S, T)
    print(f"first-call JIT (excluded above): ours {cold:.2f} s cold (compile + write cache), "
          f"{warm:.2f} s with the on-disk cache; baseline {base_jit:.2f} s (not cached)")


if __name__ == "__main__":
    main()

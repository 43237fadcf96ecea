"""Monotonic alignment search (MAS), the Viterbi-like DP that VITS / Bert-VITS2 use to align
spectrogram frames to text tokens while training.

    path = maximum_path(neg_cent, mask)   # [B, T_spec, T_text] -> [B, T_spec, T_text] of 0/1

Every valid spec frame `y` is assigned exactly one valid text token `x(y)`, with x(0) = 0,
x(T_spec_b - 1) = T_text_b - 1 and x(y + 1) - x(y) in {0, 1}; among those alignments the one with
the largest sum of `neg_cent[b, y, x(y)]` is returned. Per-item lengths come from `mask` (as
upstream: T_spec_b = mask[b, :, 0].sum(), T_text_b = mask[b, 0, :].sum()).

Semantics are upstream's (`monotonic_align/core.py`) bit for bit on feasible items, including the
tie-break (on a tie the backtrack stays on the same token) and the -1e9 "impossible" score, and
the DP accumulates in float32 as upstream does. Two cases upstream leaves undefined are defined
here: an item with no valid frame or token gets an all-zero path (upstream writes into the last
column), and an item with more tokens than frames (no monotonic alignment covers every token)
gets the diagonal x(y) = y for its frames.

Two implementations of the same DP:
- "numba" (default whenever numba imports): a compiled kernel (nogil, cached on disk), the
  batch split over a small thread pool (items balanced by T_spec * T_text). The inner loop over
  tokens is branch-free with unsigned indices so it compiles to SIMD, and only one byte per cell
  (which predecessor won) is kept for the backtrack instead of the float score matrix. Works for
  tensors on any device (round trip through host memory, like upstream). Python threads rather
  than numba's `parallel=True`/`prange`: the OpenMP layer's spinning barriers collapse when the
  cores are shared (data-loader workers; measured several times slower than serial under
  load), and
  libgomp is not fork-safe, which matters to a trainer that forks loader workers each epoch.
- "torch": the DP vectorised over batch and tokens, looping over frames with tensor ops; runs on
  the tensor's own device with no numba. Slower on CPU (per-op overhead x 2 * T_spec steps); it
  is the fallback when numba is unavailable and an option for GPU tensors.
"""
from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["maximum_path", "maximum_path_numba", "maximum_path_torch", "HAVE_NUMBA"]

# Score of an impossible predecessor, as upstream. -1e9 is exactly representable in float32.
NEG_INF = -1e9

try:  # numba is optional: without it, everything runs on the torch path.
    import numba

    HAVE_NUMBA = True
except Exception:  # pragma: no cover - exercised only where numba is missing/broken
    numba = None
    HAVE_NUMBA = False


def _jit(**kwargs):
    """numba.njit with on-disk caching when a cache location is writable, without otherwise."""
    def wrap(fn):
        try:
            return numba.njit(cache=True, **kwargs)(fn)
        except Exception:  # e.g. "no locator available": read-only install and no NUMBA_CACHE_DIR
            return numba.njit(cache=False, **kwargs)(fn)
    return wrap


if HAVE_NUMBA:

    @_jit(nogil=True, boundscheck=False)
    def _mas_item(value, t_y, t_x, path):  # pragma: no cover - compiled
        """One item. value: [T_spec, T_text] float32 (read only); path: [T_spec, T_text] float32 (out)."""
        path[:, :] = 0.0
        if t_y <= 0 or t_x <= 0:
            return
        if t_x > t_y:  # infeasible: more tokens than frames
            for y in range(t_y):
                path[y, y] = 1.0
            return

        # Rolling score rows, shifted by one: buf[x + 1] = Q[y, x], buf[0] = Q[y, -1] = -1e9.
        # Cells never written keep -1e9, which is exactly upstream's "x == y" / "x == 0" rule.
        neg = np.float32(NEG_INF)
        prev = np.full(t_x + 1, neg, dtype=np.float32)
        cur = np.full(t_x + 1, neg, dtype=np.float32)
        # up[y, x] = 1 when the best predecessor of (y, x) is (y - 1, x - 1) strictly (ties stay).
        up = np.zeros((t_y, t_x), dtype=np.uint8)

        prev[1] = value[0, 0]  # Q[0, 0]; no other cell of frame 0 is reachable
        one = np.uint64(1)
        for y in range(1, t_y):
            # Unsigned indices: numba then drops its negative-index wraparound, and the
            # branch-free body below compiles to SIMD compare/max/add (about 7x faster).
            lo = np.uint64(max(0, t_x + y - t_y))  # cells that can still reach (t_y - 1, t_x - 1)
            hi = np.uint64(min(t_x, y + 1))  # cells reachable from (0, 0)
            row = value[y]
            up_y = up[y]
            for x in range(lo, hi):
                diag = prev[x]  # Q[y - 1, x - 1]
                stay = prev[x + one]  # Q[y - 1, x]
                cur[x + one] = row[x] + (stay if stay > diag else diag)  # upstream's max(diag, stay)
                up_y[x] = stay < diag
            prev, cur = cur, prev

        index = t_x - 1
        for y in range(t_y - 1, -1, -1):
            path[y, index] = 1.0
            if index != 0 and (index == y or up[y, index] != 0):
                index -= 1

    @_jit(nogil=True, boundscheck=False)
    def _mas_items(values, t_ys, t_xs, paths, items):  # pragma: no cover - compiled
        """values, paths: [B, T_spec, T_text] float32 C-contiguous; t_ys, t_xs: [B] int64;
        items: int64 indices of the items this call handles. Releases the GIL."""
        for i in range(items.shape[0]):
            b = items[i]
            _mas_item(values[b], t_ys[b], t_xs[b], paths[b])


_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_size = 0
_pool_lock = threading.Lock()


def _get_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of at least `workers` threads (it only grows), remade after a fork:
    a forked child inherits the executor object but none of its threads."""
    global _pool, _pool_pid, _pool_size
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid() or _pool_size < workers:
            if _pool is not None and _pool_pid == os.getpid():
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mas")
            _pool_pid, _pool_size = os.getpid(), workers
        return _pool


def _split(cost: np.ndarray, parts: int) -> list[np.ndarray]:
    """Items into `parts` groups of similar total cost (largest first, each to the lightest group)."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    load = [0] * parts
    for b in np.argsort(-cost, kind="stable"):
        k = load.index(min(load))
        groups[k].append(int(b))
        load[k] += int(cost[b])
    return [np.asarray(g, dtype=np.int64) for g in groups if g]


def _check(neg_cent: torch.Tensor, mask: torch.Tensor) -> None:
    if neg_cent.dim() != 3:
        raise ValueError(f"neg_cent must be [B, T_spec, T_text], got shape {tuple(neg_cent.shape)}")
    if tuple(mask.shape) != tuple(neg_cent.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} != neg_cent shape {tuple(neg_cent.shape)}")


def _lengths(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T_spec, T_text] mask -> (T_spec_b, T_text_b), each [B] int64 on mask's device."""
    if mask.shape[1] == 0 or mask.shape[2] == 0:
        zeros = torch.zeros(mask.shape[0], dtype=torch.int64, device=mask.device)
        return zeros, zeros.clone()
    t_spec = mask[:, :, 0].to(torch.int64).sum(1)
    t_text = mask[:, 0, :].to(torch.int64).sum(1)
    return t_spec, t_text


def maximum_path_numba(neg_cent: torch.Tensor, mask: torch.Tensor,
                       num_threads: int | None = None) -> torch.Tensor:
    """MAS with the compiled numba kernel, items spread over `num_threads` threads
    (default: torch.get_num_threads(), capped at the batch size). See module docstring."""
    if not HAVE_NUMBA:
        raise RuntimeError("numba is not available; use maximum_path_torch")
    _check(neg_cent, mask)
    t_spec, t_text = _lengths(mask)
    t_ys = t_spec.cpu().numpy()
    t_xs = t_text.cpu().numpy()
    values = neg_cent.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    paths = np.empty(values.shape, dtype=np.float32)  # every item is zeroed by the kernel
    B = values.shape[0]
    workers = max(1, min(B, num_threads if num_threads is not None else torch.get_num_threads()))
    if workers == 1:
        _mas_items(values, t_ys, t_xs, paths, np.arange(B, dtype=np.int64))
    else:
        groups = _split(t_ys * t_xs + 1, workers)
        pool = _get_pool(workers - 1)
        futures = [pool.submit(_mas_items, values, t_ys, t_xs, paths, g) for g in groups[1:]]
        _mas_items(values, t_ys, t_xs, paths, groups[0])  # the calling thread takes a share too
        for f in futures:
            f.result()
    return torch.from_numpy(paths).to(device=neg_cent.device, dtype=neg_cent.dtype)


@torch.no_grad()
def maximum_path_torch(neg_cent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAS vectorised over batch and tokens with torch ops, on neg_cent's device (see module docstring)."""
    _check(neg_cent, mask)
    B, T_spec, T_text = neg_cent.shape
    device, dtype = neg_cent.device, neg_cent.dtype
    out = torch.zeros(B, T_spec, T_text, dtype=dtype, device=device)
    if B == 0 or T_spec == 0 or T_text == 0:
        return out
    t_spec, t_text = _lengths(mask.to(device))
    value = neg_cent.detach().float()

    # Forward pass. buf[:, x + 1] = Q[y, x]; buf[:, 0] = -1e9 (the x = -1 sentinel).
    # Cells above the diagonal (x > y) are held at exactly -1e9, cells that cannot reach the
    # end are computed but never read by the backtrack, which only visits cells reaching the end.
    buf = torch.full((B, T_text + 1), NEG_INF, dtype=torch.float32, device=device)
    buf[:, 1] = value[:, 0, 0]
    up = torch.zeros(B, T_spec, T_text, dtype=torch.bool, device=device)
    xs = torch.arange(T_text, device=device)
    neg = torch.tensor(NEG_INF, dtype=torch.float32, device=device)
    for y in range(1, T_spec):
        diag, stay = buf[:, :-1], buf[:, 1:]  # Q[y-1, x-1], Q[y-1, x]
        torch.lt(stay, diag, out=up[:, y])
        cur = value[:, y] + torch.maximum(stay, diag)
        if y < T_text - 1:
            cur = torch.where(xs <= y, cur, neg)
        buf[:, 1:] = cur

    # Backtrack, all items at once: index[b] is the token of frame y.
    index = (t_text - 1).clamp(min=0)
    tokens = torch.empty(B, T_spec, dtype=torch.int64, device=device)
    batch = torch.arange(B, device=device)
    for y in range(T_spec - 1, -1, -1):
        tokens[:, y] = index
        if y == 0:
            break
        move = (index != 0) & ((index == y) | up[batch, y, index]) & (y < t_spec)
        index = index - move.to(torch.int64)

    frames = torch.arange(T_spec, device=device)
    infeasible = t_text > t_spec
    if bool(infeasible.any()):  # diagonal for items with more tokens than frames
        diag_tokens = frames.clamp(max=T_text - 1).expand(B, T_spec)
        tokens = torch.where(infeasible[:, None], diag_tokens, tokens)
    valid = (frames[None, :] < t_spec[:, None]) & (t_text[:, None] > 0)  # [B, T_spec]
    out.scatter_(2, tokens.unsqueeze(2), valid.unsqueeze(2).to(dtype))
    return out


_warned_fallback = False


def maximum_path(neg_cent: torch.Tensor, mask: torch.Tensor, backend: str = "auto",
                 num_threads: int | None = None) -> torch.Tensor:
    """Monotonic alignment search, upstream's API.

    neg_cent: [B, T_spec, T_text] float, the log-likelihood of frame y under token x.
    mask:     [B, T_spec, T_text] (bool or 0/1 float), the outer product of the frame and token masks.
    backend:  "auto" (numba when importable, else torch), "numba" or "torch".
    num_threads: threads for the numba backend (default torch.get_num_threads()).
    Returns   [B, T_spec, T_text], neg_cent's dtype and device, 1 where frame y is aligned to token x.
    """
    if backend == "auto":
        backend = "numba" if HAVE_NUMBA else "torch"
        global _warned_fallback
        if backend == "torch" and not _warned_fallback and neg_cent.device.type == "cpu":
            warnings.warn("numba unavailable: monotonic alignment runs on the slower torch path",
                          RuntimeWarning, stacklevel=2)
            _warned_fallback = True
    if backend == "numba":
        return maximum_path_numba(neg_cent, mask, num_threads=num_threads)
    if backend == "torch":
        return maximum_path_torch(neg_cent, mask)
    raise ValueError(f"unknown backend {backend!r}: expected 'auto', 'numba' or 'torch'")

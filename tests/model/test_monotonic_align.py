"""Monotonic alignment search: both backends against a plain serial reference DP, exact paths."""
from __future__ import annotations

import itertools
import multiprocessing as mp

import numpy as np
import pytest
import torch

import model.monotonic_align as ma
from model.monotonic_align import maximum_path, maximum_path_numba, maximum_path_torch

BACKENDS = ["torch"] + (["numba"] if ma.HAVE_NUMBA else [])


def reference_item(neg: np.ndarray, t_y: int, t_x: int) -> np.ndarray:
    """The VITS DP for one item, serial pure Python over float32 scalars, written out plainly:
    Q[y, x] = neg[y, x] + max(Q[y-1, x-1], Q[y-1, x]), impossible cells scoring -1e9; backtrack
    from (t_y-1, t_x-1), moving to x-1 when forced (x == y) or when Q[y-1, x-1] > Q[y-1, x]."""
    BAD = np.float32(-1e9)
    q = np.full((t_y, t_x), np.nan, dtype=np.float32)  # nan: never computed, must never be read
    for y in range(t_y):
        for x in range(max(0, t_x + y - t_y), min(t_x, y + 1)):
            if y == 0:
                best = np.float32(0.0)
            else:
                stay = BAD if x == y else q[y - 1, x]
                diag = BAD if x == 0 else q[y - 1, x - 1]
                best = stay if stay > diag else diag
            q[y, x] = np.float32(neg[y, x]) + best
    path = np.zeros(neg.shape, dtype=np.float32)
    x = t_x - 1
    for y in range(t_y - 1, -1, -1):
        path[y, x] = 1
        if x != 0:
            if x == y:
                x -= 1
            else:
                assert not np.isnan(q[y - 1, x]) and not np.isnan(q[y - 1, x - 1])
                if q[y - 1, x] < q[y - 1, x - 1]:
                    x -= 1
    return path


def reference(neg_cent: torch.Tensor, t_spec: list[int], t_text: list[int]) -> torch.Tensor:
    neg = neg_cent.float().numpy()
    return torch.from_numpy(np.stack([reference_item(neg[b], t_spec[b], t_text[b])
                                      for b in range(neg.shape[0])]))


def make_mask(t_spec, t_text, T_spec, T_text, dtype=torch.float32) -> torch.Tensor:
    spec = torch.arange(T_spec)[None, :] < torch.tensor(t_spec)[:, None]
    text = torch.arange(T_text)[None, :] < torch.tensor(t_text)[:, None]
    return (spec[:, :, None] & text[:, None, :]).to(dtype)


def random_case(seed: int, max_b: int = 5, max_text: int = 30, max_spec: int = 70):
    g = torch.Generator().manual_seed(seed)
    B = int(torch.randint(1, max_b + 1, (1,), generator=g))
    t_text = torch.randint(1, max_text + 1, (B,), generator=g)
    t_spec = t_text + torch.randint(0, max_spec - max_text + 1, (B,), generator=g)
    T_text, T_spec = int(t_text.max()), int(t_spec.max())
    neg = torch.randn(B, T_spec, T_text, generator=g) * 3.0 - 2.0
    return neg, t_spec.tolist(), t_text.tolist()


def assert_valid_path(path: torch.Tensor, t_spec, t_text):
    for b in range(path.shape[0]):
        p = path[b]
        ty, tx = t_spec[b], t_text[b]
        assert set(p.unique().tolist()) <= {0.0, 1.0}
        assert p[ty:].sum() == 0 and p[:, tx:].sum() == 0  # nothing outside the valid region
        if ty == 0 or tx == 0:
            assert p.sum() == 0
            continue
        valid = p[:ty, :tx]
        assert torch.all(valid.sum(1) == 1)  # each frame exactly one token
        tokens = valid.argmax(1)
        assert tokens[0] == 0 and tokens[-1] == tx - 1  # starts at 0, ends at the last token
        steps = tokens[1:] - tokens[:-1]
        assert torch.all((steps == 0) | (steps == 1))  # monotonic, no token skipped
        assert torch.all(valid.sum(0) >= 1)  # hence every token gets at least one frame


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(40))
def test_matches_reference_random(backend, seed):
    neg, t_spec, t_text = random_case(seed)
    mask = make_mask(t_spec, t_text, *neg.shape[1:])
    path = maximum_path(neg, mask, backend=backend)
    assert torch.equal(path, reference(neg, t_spec, t_text))
    assert_valid_path(path, t_spec, t_text)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(15))
def test_ties_break_as_reference(backend, seed):
    """Small integer scores: sums are exact and ties are everywhere, so the tie-break shows."""
    g = torch.Generator().manual_seed(1000 + seed)
    neg, t_spec, t_text = random_case(1000 + seed, max_text=12, max_spec=30)
    neg = torch.randint(-2, 1, neg.shape, generator=g).float()
    mask = make_mask(t_spec, t_text, *neg.shape[1:])
    path = maximum_path(neg, mask, backend=backend)
    assert torch.equal(path, reference(neg, t_spec, t_text))
    assert_valid_path(path, t_spec, t_text)


def all_alignments(t_y: int, t_x: int):
    """Every monotonic alignment of t_y frames to t_x tokens: choose the frames where x advances."""
    for starts in itertools.combinations(range(1, t_y), t_x - 1):
        tokens, x = [], 0
        for y in range(t_y):
            if x < t_x - 1 and y == starts[x]:
                x += 1
            tokens.append(x)
        yield tokens


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimal_against_brute_force(backend):
    rng = np.random.default_rng(0)
    for t_y in range(1, 9):
        for t_x in range(1, t_y + 1):
            neg = torch.from_numpy(rng.standard_normal((1, t_y, t_x)).astype(np.float32))
            path = maximum_path(neg, torch.ones_like(neg), backend=backend)[0]
            best = max(sum(float(neg[0, y, x]) for y, x in enumerate(tokens))
                       for tokens in all_alignments(t_y, t_x))
            assert float((path * neg[0]).sum()) == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_worked(backend):
    # frames 3, tokens 2: the alignments are [0, 0, 1] and [0, 1, 1].
    neg = torch.tensor([[[1.0, -5.0], [0.0, 2.0], [3.0, 0.0]],    # 1+0+0=1 vs 1+2+0=3
                        [[1.0, -5.0], [5.0, 0.0], [0.0, 1.0]]])   # 1+5+1=7 vs 1+0+1=2
    path = maximum_path(neg, torch.ones_like(neg), backend=backend)
    assert path.tolist() == [[[1, 0], [0, 1], [0, 1]], [[1, 0], [1, 0], [0, 1]]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_equal_lengths_is_diagonal(backend):
    neg = torch.randn(3, 17, 17)
    path = maximum_path(neg, torch.ones_like(neg), backend=backend)
    assert torch.equal(path, torch.eye(17).expand(3, 17, 17))


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_token(backend):
    neg = torch.randn(2, 23, 1)
    path = maximum_path(neg, torch.ones_like(neg), backend=backend)
    assert torch.equal(path, torch.ones(2, 23, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_items_of_different_lengths(backend):
    """Padding never leaks in: each item's path is the path of the item alone, cropped, and the
    padded region (filled with huge scores that would attract the path) stays zero."""
    torch.manual_seed(3)
    t_spec, t_text = [40, 9, 25, 1, 31], [12, 9, 3, 1, 31]
    T_spec, T_text = 40, 31
    neg = torch.randn(5, T_spec, T_text)
    mask = make_mask(t_spec, t_text, T_spec, T_text, dtype=torch.bool)
    neg = torch.where(mask, neg, torch.full_like(neg, 1e6))
    path = maximum_path(neg, mask, backend=backend)
    assert_valid_path(path, t_spec, t_text)
    assert torch.equal(path, reference(neg, t_spec, t_text))
    for b in range(5):
        alone = neg[b:b + 1, :t_spec[b], :t_text[b]].contiguous()
        single = maximum_path(alone, torch.ones_like(alone), backend=backend)[0]
        assert torch.equal(path[b, :t_spec[b], :t_text[b]], single)


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_items(backend):
    """Not alignable: an empty item gets zeros, more tokens than frames gets the diagonal."""
    t_spec, t_text = [0, 3, 6], [0, 5, 4]
    neg = torch.randn(3, 6, 5)
    path = maximum_path(neg, make_mask(t_spec, t_text, 6, 5), backend=backend)
    assert path[0].sum() == 0
    expected = torch.zeros(6, 5)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 1
    assert torch.equal(path[1], expected)
    assert_valid_path(path[2:], t_spec[2:], t_text[2:])
    empty = torch.zeros(2, 0, 4)
    assert maximum_path(empty, empty, backend=backend).shape == (2, 0, 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dtype_preserved_and_no_grad(backend, dtype):
    neg, t_spec, t_text = random_case(7)
    neg = neg.to(dtype).requires_grad_(True)
    path = maximum_path(neg, make_mask(t_spec, t_text, *neg.shape[1:]), backend=backend)
    assert path.dtype == dtype and path.device == neg.device and not path.requires_grad
    assert torch.equal(path.float(), reference(neg.detach(), t_spec, t_text))


def test_backends_agree_at_training_size():
    assert ma.HAVE_NUMBA, "numba is a dependency (requirements.lock)"
    g = torch.Generator().manual_seed(11)
    t_text = torch.randint(20, 120, (8,), generator=g)
    t_spec = t_text * 3 + torch.randint(0, 60, (8,), generator=g)
    neg = -torch.rand(8, int(t_spec.max()), int(t_text.max()), generator=g) * 200
    mask = make_mask(t_spec.tolist(), t_text.tolist(), *neg.shape[1:])
    a = maximum_path_numba(neg, mask, num_threads=1)
    assert torch.equal(a, maximum_path_numba(neg, mask, num_threads=3))
    assert torch.equal(a, maximum_path_torch(neg, mask))
    assert_valid_path(a, t_spec.tolist(), t_text.tolist())


def test_bad_arguments():
    neg = torch.randn(2, 5, 3)
    with pytest.raises(ValueError):
        maximum_path(neg, torch.ones(2, 5, 4))
    with pytest.raises(ValueError):
        maximum_path(neg[0], torch.ones(5, 3))
    with pytest.raises(ValueError):
        maximum_path(neg, torch.ones_like(neg), backend="cuda-magic")


def test_falls_back_to_torch_without_numba(monkeypatch):
    monkeypatch.setattr(ma, "HAVE_NUMBA", False)
    monkeypatch.setattr(ma, "_warned_fallback", False)
    neg, t_spec, t_text = random_case(5)
    with pytest.warns(RuntimeWarning, match="numba unavailable"):
        path = ma.maximum_path(neg, make_mask(t_spec, t_text, *neg.shape[1:]))
    assert torch.equal(path, reference(neg, t_spec, t_text))


def _child_runs_mas(queue):
    neg = torch.randn(4, 30, 10)
    queue.put(float(maximum_path(neg, torch.ones_like(neg), num_threads=3).sum()))


def test_thread_pool_survives_fork():
    """A trainer forks data-loader workers after MAS has run: a child must still be able to run it."""
    assert ma.HAVE_NUMBA, "numba is a dependency (requirements.lock)"
    neg = torch.randn(4, 30, 10)
    maximum_path(neg, torch.ones_like(neg), num_threads=3)  # the parent's pool now exists
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_runs_mas, args=(queue,))
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("MAS hung in a forked child")
    assert proc.exitcode == 0 and queue.get(timeout=5) == 4 * 30

"""Tests for selfsteer.algorithms.sipo against docs/concepts/sipo.md §2–§4."""

from __future__ import annotations

import math
import random

import pytest
import torch

from selfsteer.algorithms.sipo import (
    fuse_logits,
    implicit_rewards,
    keep_rewrite,
    pareto_filter,
    select_pareto_best,
    sipo_loss,
)

# docs/concepts/sipo.md §4 worked example.
ORIGINALS = [[.30, -.10, .05], [.10, .20, 0]]
CANDIDATES = [[.35, .25, .10], [.40, .20, .30], [.50, .60, -.01], [.31, .21, .06]]
PI_C, PI_R, REF_C, REF_R, LENS = [-50.0, -80.0], [-60.0, -70.0], [-52.0, -79.0], [-58.0, -72.0], [25, 40]


def t(x, **kw):
    kw.setdefault("dtype", torch.float32)
    return torch.tensor(x, **kw)


# ---------------------------------------------------------------- scalar reference (docs/concepts/sipo.md §2)
def softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def ref_fuse(a, b, w):
    v = min(len(a), len(b))
    return [w * a[i] + (1 - w) * b[i] for i in range(v)]


def ref_pareto(cands, origs):
    return [all(c[m] > o[m] for o in origs for m in range(len(c))) for c in cands]


def ref_best(cands, mask):
    best = None
    for n, (c, ok) in enumerate(zip(cands, mask)):
        if ok and (best is None or sum(c) > sum(cands[best])):  # strict: first wins ties
            best = n
    return best


def ref_keep(rew, mod):
    return [any(r > m for r, m in zip(rr, mm)) for rr, mm in zip(rew, mod)]


def ref_loss(pc, pr, rc, rr, lens, beta, alpha):
    rows = [softplus(-beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))) - alpha * pc[i] / lens[i] for i in range(len(pc))]
    return sum(rows) / len(rows)


# ---------------------------------------------------------------- fuse_logits
def test_fuse_worked_example():
    a, b = t([2, 1, .5, -1]), t([0, 3, 1, 0, 7])
    z = fuse_logits(a, b, 0.4)
    assert z.dtype == torch.float32 and z.shape == (4,)
    assert z.tolist() == pytest.approx([0.8, 2.2, 0.8, -0.4], abs=1e-6)
    assert int(z.argmax()) == 1
    assert torch.softmax(z, -1).tolist() == pytest.approx([0.157322, 0.637972, 0.157322, 0.0473844], abs=1e-6)
    # Fusing log-softmaxes shifts by a constant: same softmax and argmax.
    zl = fuse_logits(torch.log_softmax(a, -1), torch.log_softmax(b[:4], -1), 0.4)
    assert (z - zl).tolist() == pytest.approx([2.92467] * 4, abs=1e-5)
    assert torch.softmax(zl, -1).tolist() == pytest.approx(torch.softmax(z, -1).tolist(), abs=1e-6)


def test_fuse_batched_bf16_and_endpoints():
    a = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    b = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    z = fuse_logits(a, b, 0.6)
    assert z.shape == (2, 3, 5) and z.dtype == torch.float32
    assert torch.allclose(z, 0.6 * a[..., :5].float() + 0.4 * b.float())
    # -inf (masked vocab) in the zero-weight model must not become NaN at the endpoints.
    x, y = t([1.0, float("-inf"), 2.0]), t([float("-inf"), 0.5, 3.0])
    assert fuse_logits(x, y, 1.0).tolist() == x.tolist()
    assert fuse_logits(x, y, 0.0).tolist() == y.tolist()


@pytest.mark.parametrize("weight", [-0.1, 1.1, float("nan")])
def test_fuse_rejects_bad_weight(weight):
    with pytest.raises(ValueError):
        fuse_logits(t([1.0, 2.0]), t([1.0, 2.0]), weight)


def test_fuse_rejects_mismatched_leading_dims():
    with pytest.raises(ValueError):
        fuse_logits(torch.zeros(2, 4), torch.zeros(3, 4), 0.5)


# ---------------------------------------------------------------- implicit rewards
def test_implicit_rewards_worked_example():
    assert implicit_rewards(t([-40.0]), t([-42.5])).item() == pytest.approx(0.25)
    assert implicit_rewards(t([-40.0]), t([-42.5]), beta=1.0).item() == pytest.approx(2.5)
    with pytest.raises(ValueError):
        implicit_rewards(t([-40.0, 1.0]), t([-42.5]))
    with pytest.raises(ValueError):
        implicit_rewards(t([-40.0]), t([-42.5]), beta=0.0)


# ---------------------------------------------------------------- filter / select / keep
def test_pareto_worked_example():
    cand, orig = t(CANDIDATES), t(ORIGINALS)
    mask = pareto_filter(cand, orig)
    assert mask.dtype == torch.bool and mask.tolist() == [True, False, False, True]
    assert cand.sum(-1).tolist() == pytest.approx([0.70, 0.90, 1.09, 0.58], abs=1e-6)
    assert select_pareto_best(cand, mask) == 0
    assert select_pareto_best(cand, torch.zeros(4, dtype=torch.bool)) is None
    assert select_pareto_best(cand, torch.ones(4, dtype=torch.bool)) == 2


def test_pareto_batched_and_ties():
    cand = torch.stack([t(CANDIDATES), t(CANDIDATES) + 1.0])
    orig = torch.stack([t(ORIGINALS), t(ORIGINALS)])
    assert pareto_filter(cand, orig).tolist() == [[True, False, False, True], [True] * 4]
    same = t([[1.0, 1.0], [2.0, 0.0], [0.5, 1.5]])
    assert select_pareto_best(same, torch.tensor([False, True, True])) == 1  # equal sums -> lowest index


def test_keep_rewrite_worked_example():
    rew = t([[.1, .15], [.2, .1], [.19, .05]])
    mod = t([[.2, .1]] * 3)
    assert keep_rewrite(rew, mod).tolist() == [True, False, False]


def test_filter_shape_errors():
    with pytest.raises(ValueError):
        pareto_filter(torch.zeros(4, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        pareto_filter(torch.zeros(2, 4, 3), torch.zeros(3, 2, 3))
    with pytest.raises(ValueError):
        pareto_filter(torch.zeros(3), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        select_pareto_best(torch.zeros(4, 3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError):
        select_pareto_best(torch.zeros(4, 3), torch.ones(4))
    with pytest.raises(ValueError):
        keep_rewrite(torch.zeros(3, 2), torch.zeros(3, 3))


@pytest.mark.parametrize("trial", range(30))
def test_random_filters_match_reference_loop(trial):
    py = random.Random(trial)
    n, k, m = py.randint(1, 8), py.randint(1, 3), py.randint(1, 6)
    # Coarse grid values make ties (strictness) common.
    grid = lambda: py.randint(-4, 4) / 4  # noqa: E731
    cands = [[grid() for _ in range(m)] for _ in range(n)]
    origs = [[grid() - 0.5 for _ in range(m)] for _ in range(k)]
    mask = pareto_filter(t(cands), t(origs)).tolist()
    assert mask == ref_pareto(cands, origs)
    rand_mask = [py.random() < 0.6 for _ in range(n)]
    for msk in (mask, rand_mask):
        got = select_pareto_best(t(cands, dtype=torch.float64), torch.tensor(msk, dtype=torch.bool))
        assert got == ref_best(cands, msk)
    mods = [[grid() for _ in range(m)] for _ in range(n)]
    assert keep_rewrite(t(cands), t(mods)).tolist() == ref_keep(cands, mods)
    a = [py.gauss(0, 3) for _ in range(py.randint(1, 9))]
    b = [py.gauss(0, 3) for _ in range(py.randint(1, 9))]
    w = py.random()
    assert fuse_logits(t(a, dtype=torch.float64), t(b, dtype=torch.float64), w).tolist() == pytest.approx(
        ref_fuse(a, b, w), abs=1e-5)


# ---------------------------------------------------------------- sipo_loss
def test_sipo_loss_worked_example():
    args = (t(PI_C), t(PI_R), t(REF_C), t(REF_R))
    loss = sipo_loss(*args, torch.tensor(LENS))
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.883685, abs=1e-5)
    dpo = [softplus(-z) for z in (0.4, -0.3)]  # z = β h
    assert dpo == pytest.approx([0.513015, 0.854355], abs=1e-6)
    assert [-p / n for p, n in zip(PI_C, LENS)] == [2.0, 2.0]
    # Official padded-length rule (docs/concepts/sipo.md §6.1): ℓ = 61 / 60.
    assert sipo_loss(*args, torch.tensor([61.0, 60.0])).item() == pytest.approx(0.791336, abs=1e-5)
    assert sipo_loss(*args, torch.tensor(LENS), beta=0.1, alpha=0.1).item() == pytest.approx(
        ref_loss(PI_C, PI_R, REF_C, REF_R, LENS, 0.1, 0.1), abs=1e-6)


def test_sipo_loss_gradients():
    pc, pr = t(PI_C, requires_grad=True), t(PI_R, requires_grad=True)
    rc, rr = t(REF_C, requires_grad=True), t(REF_R, requires_grad=True)
    sipo_loss(pc, pr, rc, rr, torch.tensor(LENS)).backward()
    assert rc.grad is None and rr.grad is None
    sig = [1 - math.exp(-0.513015), 1 - math.exp(-0.854355)]  # σ(-βh)
    expected = [(-0.1 * sig[i] - 0.1 / LENS[i]) / 2 for i in range(2)]
    assert pc.grad.tolist() == pytest.approx(expected, abs=1e-6)
    assert pr.grad.tolist() == pytest.approx([0.1 * s / 2 for s in sig], abs=1e-6)


@pytest.mark.parametrize("trial", range(10))
def test_random_loss_matches_reference_loop(trial):
    py = random.Random(500 + trial)
    b = py.randint(1, 6)
    cols = [[-py.uniform(1, 200) for _ in range(b)] for _ in range(4)]
    lens = [py.randint(1, 300) for _ in range(b)]
    beta, alpha = py.choice([0.05, 0.1, 1.0]), py.choice([0.0, 0.1, 1.0])
    got = sipo_loss(*(t(c, dtype=torch.float64) for c in cols), torch.tensor(lens), beta=beta, alpha=alpha)
    assert got.item() == pytest.approx(ref_loss(*cols, lens, beta, alpha), rel=1e-9)


@pytest.mark.parametrize("case", ["zero_len", "neg_len", "nan_len", "shape", "2d", "empty", "beta"])
def test_sipo_loss_rejects_bad_inputs(case):
    args = [t(PI_C), t(PI_R), t(REF_C), t(REF_R), torch.tensor(LENS)]
    kw = {}
    if case == "zero_len":
        args[4] = torch.tensor([25, 0])
    elif case == "neg_len":
        args[4] = torch.tensor([-1.0, 40.0])
    elif case == "nan_len":
        args[4] = torch.tensor([float("nan"), 40.0])
    elif case == "shape":
        args[1] = t([-60.0])
    elif case == "2d":
        args = [a[None] for a in args]
    elif case == "empty":
        args = [torch.zeros(0) for _ in args]
    elif case == "beta":
        kw["beta"] = -0.1
    with pytest.raises(ValueError):
        sipo_loss(*args, **kw)

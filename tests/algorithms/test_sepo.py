"""Tests for selfsteer.algorithms.sepo against docs/concepts/sepo.md §2–§4."""

from __future__ import annotations

import math
import random

import pytest
import torch

from selfsteer.algorithms.sepo import select_tokens, sepo_loss, sequence_reward, token_rewards

NEG_INF = float("-inf")
# docs/concepts/sepo.md §4 worked example. Chosen row 0 oracle/ref given; the other rows only give r.
ORACLE_C0 = [-1.25, -.5, -2, -.375, -1, -1.125, -.125, -2.5, -.625, -.625]
REF_C0 = [-1.5, -.5, -1.25, -.875, -1, -1.375, -.25, -2, -1.125, -.875]
R_CHOSEN = [[.25, 0, -.75, .5, 0, .25, .125, -.5, .5, .25], [.5, -.5, 0, .375]]
R_REJECTED = [[-1, .25, 0, -1.5, .25, -1, .125], [.125, -1, .25]]
SEL_CHOSEN = [{3, 8, 0}, {0}]
SEL_REJECTED = [{3, 0}, {1}]
LP_CHOSEN = [[-.9, -.4, -1.1, -.5, -.7, -.6, -.2, -1.8, -.5, -.8], [-.3, -1.2, -.6, -.4]]
LP_REJECTED = [[-1.7, -.8, -1, -2.4, -.5, -1.3, -.3], [-.9, -1.9, -.4]]


def padded(rows, fill=0.0, dtype=torch.float32):
    """Right-pads ragged rows into ([B, T] values, [B, T] bool mask)."""
    width = max(len(r) for r in rows)
    vals = torch.full((len(rows), width), fill, dtype=dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        vals[i, :len(r)] = torch.tensor(r, dtype=dtype)
        mask[i, :len(r)] = True
    return vals, mask


def as_sets(sel):
    return [set(torch.nonzero(row).flatten().tolist()) for row in sel]


# ---------------------------------------------------------------- scalar reference (official code)
def ref_select(rewards, eligible, fraction, largest):
    """Repeated argmax/argmin with a sentinel over eligible positions, as token_score.py does."""
    idx = [t for t, e in enumerate(eligible) if e]
    vals = [rewards[t] for t in idx]
    n = len(idx)
    k = 0 if n == 0 else max(1, int(float(fraction) * n))
    picked = set()
    sentinel = NEG_INF if largest else float("inf")
    for _ in range(k):
        best = None
        for a, v in enumerate(vals):  # strict comparison: first (lowest) index wins ties
            if v == sentinel:
                continue
            if best is None or (v > vals[best] if largest else v < vals[best]):
                best = a
        picked.add(idx[best])
        vals[best] = sentinel
    return picked


def ref_loss(lp_c, sel_c, lp_r, sel_r, beta=1.0, gamma=0.0):
    total = 0.0
    for lc, sc, lr, sr in zip(lp_c, sel_c, lp_r, sel_r):
        m_c = sum(lc[t] for t in sc) / len(sc)
        m_r = sum(lr[t] for t in sr) / len(sr)
        x = -(beta * (m_c - m_r) - gamma)
        total += max(x, 0.0) + math.log1p(math.exp(-abs(x)))
    return total / len(lp_c)


# ---------------------------------------------------------------- worked example
def test_token_rewards_worked_example():
    oracle, mask = padded([ORACLE_C0], fill=NEG_INF)
    ref, _ = padded([REF_C0], fill=NEG_INF)
    r = token_rewards(oracle.double(), ref.double(), mask)
    assert r.dtype == torch.float32
    assert r[0].tolist() == R_CHOSEN[0]  # all values are exact binary fractions


def test_token_rewards_zero_outside_mask_and_detached():
    o = torch.tensor([[-1.0, NEG_INF, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, NEG_INF, float("nan")]])
    mask = torch.tensor([[True, False, False]])
    r = token_rewards(o, ref, mask)
    assert r.tolist() == [[0.5, 0.0, 0.0]] and not r.requires_grad


def test_select_tokens_worked_example():
    rc, mc = padded(R_CHOSEN, fill=99.0)  # padding value must not matter
    rr, mr = padded(R_REJECTED, fill=-99.0)
    sel_c = select_tokens(rc, mc, fraction=0.3, largest=True)
    sel_r = select_tokens(rr, mr, fraction=0.3, largest=False)
    assert sel_c.dtype == torch.bool and sel_c.shape == rc.shape
    assert as_sets(sel_c) == SEL_CHOSEN  # 0.25 tie at 0/5/9 -> 0
    assert as_sets(sel_r) == SEL_REJECTED  # int(0.9) = 0 -> min 1
    assert select_tokens(rc, mc, largest=True).equal(sel_c)  # default fraction 0.3


def test_sepo_loss_worked_example():
    rc, mc = padded(R_CHOSEN)
    rr, mr = padded(R_REJECTED)
    sel_c = select_tokens(rc, mc, fraction=0.3, largest=True)
    sel_r = select_tokens(rr, mr, fraction=0.3, largest=False)
    lp_c, _ = padded(LP_CHOSEN, fill=NEG_INF)
    lp_r, _ = padded(LP_REJECTED, fill=NEG_INF)
    loss = sepo_loss(lp_c, sel_c, lp_r, sel_r)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.200522, abs=1e-5)
    m_c = [(-0.5 - 0.5 - 0.9) / 3, -0.3]
    m_r = [(-2.4 - 1.7) / 2, -1.9]
    assert m_c == pytest.approx([-0.633333, -0.3], abs=1e-6) and m_r == pytest.approx([-2.05, -1.9], abs=1e-6)
    per_row = [math.log1p(math.exp(-(c - r))) for c, r in zip(m_c, m_r)]
    assert per_row == pytest.approx([0.217142, 0.183901], abs=1e-6)
    assert sepo_loss(lp_c, sel_c, lp_r, sel_r, beta=2.0).item() == pytest.approx(0.0485525, abs=1e-6)
    assert sepo_loss(lp_c, sel_c, lp_r, sel_r, beta=2.5, gamma=1.0).item() == pytest.approx(0.0621882, abs=1e-6)
    sets_c, sets_r = as_sets(sel_c), as_sets(sel_r)
    assert loss.item() == pytest.approx(ref_loss(LP_CHOSEN, sets_c, LP_REJECTED, sets_r), abs=1e-6)


def test_sepo_loss_gradient_policy_only():
    rc, mc = padded(R_CHOSEN)
    rr, mr = padded(R_REJECTED)
    sel_c = select_tokens(rc, mc, largest=True)
    sel_r = select_tokens(rr, mr, largest=False)
    lp_c = padded(LP_CHOSEN, fill=NEG_INF)[0].requires_grad_()
    lp_r = padded(LP_REJECTED, fill=NEG_INF)[0].requires_grad_()
    sepo_loss(lp_c, sel_c, lp_r, sel_r).backward()
    assert torch.isfinite(lp_c.grad).all() and torch.isfinite(lp_r.grad).all()
    assert (lp_c.grad[~sel_c] == 0).all() and (lp_r.grad[~sel_r] == 0).all()
    assert (lp_c.grad[sel_c] < 0).all() and (lp_r.grad[sel_r] > 0).all()


def test_sequence_reward():
    rc, mc = padded(R_CHOSEN, fill=123.0)
    assert sequence_reward(rc, mc).tolist() == pytest.approx([sum(R_CHOSEN[0]), sum(R_CHOSEN[1])])
    assert sequence_reward(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool)).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- k rules and eligibility
def test_select_tokens_counts_and_edge_rows():
    r = torch.tensor([[3.0, 1.0, 2.0, 0.0], [5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[True] * 4, [False] * 4, [False, True, True, True]])
    assert as_sets(select_tokens(r, mask, fraction=1.0, largest=True)) == [{0, 1, 2, 3}, set(), {1, 2, 3}]
    # Ineligible first token (official parity setting) is never chosen even with the top reward.
    r2 = torch.tensor([[9.0, 1.0, 2.0, 3.0]])
    m2 = torch.tensor([[False, True, True, True]])
    assert as_sets(select_tokens(r2, m2, fraction=0.5, largest=True)) == [{3}]
    assert as_sets(select_tokens(r2, m2, fraction=0.5, largest=False)) == [{1}]
    # Exact float64 truncation: 0.7 * 10 = 7.000000000000001 -> 7; 0.29 * 100 -> 28.
    assert int(select_tokens(torch.zeros(1, 10), torch.ones(1, 10, dtype=torch.bool),
                             fraction=0.7, largest=True).sum()) == 7
    assert int(select_tokens(torch.zeros(1, 100), torch.ones(1, 100, dtype=torch.bool),
                             fraction=0.29, largest=True).sum()) == 28


def test_select_tokens_ties_and_signed_zero():
    r = torch.tensor([[0.0, -0.0, 0.0, -0.0, 1.0]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    assert as_sets(select_tokens(r, mask, fraction=0.6, largest=True)) == [{4, 0, 1}]
    assert as_sets(select_tokens(r, mask, fraction=0.6, largest=False)) == [{0, 1, 2}]


@pytest.mark.parametrize("trial", range(40))
def test_random_selection_matches_reference_loop(trial):
    py = random.Random(trial)
    b, t = py.randint(1, 5), py.randint(1, 30)
    # Quarter-step rewards make ties common; masks are ragged and may skip the first token.
    rewards = [[py.randint(-6, 6) / 4 for _ in range(t)] for _ in range(b)]
    masks = []
    for _ in range(b):
        length = py.randint(0, t)
        masks.append([(i < length) and not (i == 0 and py.random() < 0.5) for i in range(t)])
    fraction = py.choice([0.05, 0.1, 0.29, 0.3, 0.5, 0.7, 0.9, 1.0])
    r, m = torch.tensor(rewards), torch.tensor(masks, dtype=torch.bool)
    for largest in (True, False):
        got = as_sets(select_tokens(r, m, fraction=fraction, largest=largest))
        exp = [ref_select(rewards[i], masks[i], fraction, largest) for i in range(b)]
        assert got == exp


@pytest.mark.parametrize("trial", range(10))
def test_random_loss_matches_reference_loop(trial):
    py = random.Random(1000 + trial)
    b = py.randint(1, 4)
    lp_c = [[-py.random() * 3 for _ in range(py.randint(1, 12))] for _ in range(b)]
    lp_r = [[-py.random() * 3 for _ in range(py.randint(1, 12))] for _ in range(b)]
    sel_c = [set(py.sample(range(len(row)), py.randint(1, len(row)))) for row in lp_c]
    sel_r = [set(py.sample(range(len(row)), py.randint(1, len(row)))) for row in lp_r]
    vc, _ = padded(lp_c, dtype=torch.float64)
    vr, _ = padded(lp_r, dtype=torch.float64)
    mc = torch.zeros(vc.shape, dtype=torch.bool)
    mr = torch.zeros(vr.shape, dtype=torch.bool)
    for i in range(b):
        mc[i, list(sel_c[i])] = True
        mr[i, list(sel_r[i])] = True
    beta, gamma = py.choice([1.0, 2.0, 0.5]), py.choice([0.0, 1.0, -0.5])
    got = sepo_loss(vc, mc, vr, mr, beta=beta, gamma=gamma).item()
    assert got == pytest.approx(ref_loss(lp_c, sel_c, lp_r, sel_r, beta, gamma), rel=1e-9)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("fraction", [0.0, -0.3, 1.5, float("nan")])
def test_select_tokens_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError):
        select_tokens(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), fraction=fraction, largest=True)


def test_shape_and_dtype_errors():
    ones = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError):
        select_tokens(torch.zeros(2, 3), torch.ones(2, 3), largest=True)  # non-bool mask
    with pytest.raises(ValueError):
        select_tokens(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool), largest=True)
    with pytest.raises(ValueError):
        select_tokens(torch.zeros(3), torch.ones(3, dtype=torch.bool), largest=True)  # not [B, T]
    with pytest.raises(ValueError):
        token_rewards(torch.zeros(2, 3), torch.zeros(2, 4), ones)
    with pytest.raises(ValueError):
        token_rewards(torch.zeros(2, 3), torch.zeros(2, 3), ones.long())
    with pytest.raises(ValueError):
        sequence_reward(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))


@pytest.mark.parametrize("case", ["empty_chosen_row", "empty_rejected_row", "batch_mismatch", "mask_shape",
                                  "empty_batch", "beta"])
def test_sepo_loss_rejects_bad_inputs(case):
    lp_c, lp_r = torch.full((2, 3), -1.0), torch.full((2, 4), -2.0)
    sel_c, sel_r = torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    kw = {}
    if case == "empty_chosen_row":
        sel_c[1] = False
    elif case == "empty_rejected_row":
        sel_r[0] = False
    elif case == "batch_mismatch":
        lp_r, sel_r = lp_r[:1], sel_r[:1]
    elif case == "mask_shape":
        sel_c = sel_c[:, :2]
    elif case == "empty_batch":
        lp_c, lp_r, sel_c, sel_r = lp_c[:0], lp_r[:0], sel_c[:0], sel_r[:0]
    elif case == "beta":
        kw["beta"] = 0.0
    with pytest.raises(ValueError):
        sepo_loss(lp_c, sel_c, lp_r, sel_r, **kw)

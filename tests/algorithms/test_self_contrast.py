"""Tests for selfsteer.algorithms.self_contrast against docs/concepts/self-contrast.md §2–§4."""

from __future__ import annotations

import math
import random

import pytest
import torch

from selfsteer.algorithms.dpo import dpo_sigmoid_loss
from selfsteer.algorithms.self_contrast import cosine_similarities, multi_negative_dpo_loss, select_negatives

# docs/concepts/self-contrast.md §4 worked example.
TARGET = [1.0, 0.0, 0.0]
CANDS = [[.9, .1, 0], [.2, .9, .1], [.5, .5, .5], [-.3, .8, .2], [.9, .1, 0], [.7, .7, 0],
         [.1, .1, .95], [.6, -.2, .7]]
TEXTS = ["a", "b", "c", "d", "a", "e", "", "f"]
SIMS = [0.993884, 0.215666, 0.577350, -0.341882, 0.993884, 0.707107, 0.104116, 0.635999]
PI_C, REF_C = [-10.0, -20.0], [-11.0, -19.0]
PI_R, REF_R = [[-15.0, -12.0], [-25.0, -18.0]], [[-14.0, -13.0], [-24.5, -20.0]]
PER_PAIR = [0.598139, 0.693147, 0.718460, 0.854355]


def t(x, **kw):
    return torch.tensor(x, dtype=torch.float32, **kw)


# ---------------------------------------------------------------- scalar reference (docs/concepts/self-contrast.md §2)
def ref_cos(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    nu = math.sqrt(sum(a * a for a in u))
    nv = math.sqrt(sum(b * b for b in v))
    return dot / max(nu * nv, 1e-8)


def ref_select(target, cands, *, drop_fraction, k, rng, texts=None, dup_threshold=1.0 - 1e-6):
    """Plain-Python `lastdedup` selection, step by step as docs/concepts/self-contrast.md §2 describes it."""
    n = len(cands)
    s = [ref_cos(target, c) for c in cands]
    rho = [sum(1 for j in range(n) if s[j] < s[i]) for i in range(n)]
    uniques = []  # step 1: first occurrences in rollout order
    for j in range(n):
        if texts is not None:
            dup = any(texts[i] == texts[j] for i in uniques)
        else:
            dup = any(ref_cos(cands[i], cands[j]) >= dup_threshold for i in uniques)
        if not dup:
            uniques.append(j)
    if not uniques:  # step 3
        return []
    n_keep = min(int(math.floor(n * (1 - drop_fraction) + 1e-9)), len(uniques) - 1)  # step 2
    tau = sorted(rho[i] for i in uniques)[n_keep]
    kept = [i for i in uniques if rho[i] < tau]
    if texts is not None:  # step 4
        kept = [i for i in kept if texts[i].lstrip(" ") != ""]
    if len(kept) < k:  # step 5
        return []
    return [kept[p] for p in sorted(rng.sample(range(len(kept)), k))]


def softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def ref_loss(pc, pr, rc, rr, beta, mask=None):
    total, count = 0.0, 0
    for b in range(len(pc)):
        for j in range(len(pr[b])):
            if mask is not None and not mask[b][j]:
                continue
            total += softplus(-beta * ((pc[b] - rc[b]) - (pr[b][j] - rr[b][j])))
            count += 1
    return total / count


# ---------------------------------------------------------------- select_negatives
def test_worked_example_similarities_and_ranks():
    s = cosine_similarities(t(TARGET), t(CANDS))
    assert s.dtype == torch.float32
    assert s.tolist() == pytest.approx(SIMS, abs=1e-6)
    ranks = (s[None, :] < s[:, None]).sum(-1).tolist()
    assert ranks == [6, 2, 3, 0, 6, 5, 1, 4]


def test_worked_example_selection():
    rng = random.Random(42)
    assert select_negatives(t(TARGET), t(CANDS), drop_fraction=0.25, k=2, rng=rng, texts=TEXTS) == [1, 7]
    check = random.Random(42)
    check.sample(range(5), 2)  # exactly one draw over the m = 5 survivors
    assert rng.getstate() == check.getstate()


def test_worked_example_matches_reference_loop():
    got = select_negatives(t(TARGET), t(CANDS), k=2, rng=random.Random(42), texts=TEXTS)
    assert got == ref_select(TARGET, CANDS, drop_fraction=0.25, k=2, rng=random.Random(42), texts=TEXTS) == [1, 7]


def test_embedding_dedup_without_texts():
    # 4 duplicates 0 by embedding; nothing counts as empty, so 6 survives: kept [1,2,3,5,6,7].
    got = select_negatives(t(TARGET), t(CANDS), k=2, rng=random.Random(42))
    expected = [[1, 2, 3, 5, 6, 7][p] for p in sorted(random.Random(42).sample(range(6), 2))]
    assert got == expected
    assert select_negatives(t(TARGET), t(CANDS), k=6, rng=random.Random(0)) == [1, 2, 3, 5, 6, 7]


def test_fewer_than_k_returns_empty_and_leaves_rng():
    rng = random.Random(7)
    state = rng.getstate()
    assert select_negatives(t(TARGET), t(CANDS), k=6, rng=rng, texts=TEXTS) == []  # m = 5 < 6
    assert rng.getstate() == state
    assert select_negatives(t(TARGET), t(CANDS), k=5, rng=rng, texts=TEXTS) == [1, 2, 3, 5, 7]


def test_degenerate_inputs():
    rng = random.Random(0)
    assert select_negatives(t(TARGET), torch.zeros(0, 3), k=1, rng=rng) == []  # N = 0
    # All duplicates: U = 1 -> n_keep = 0 -> the single unique is the most similar, dropped.
    assert select_negatives(t(TARGET), t([CANDS[1]] * 4), k=1, rng=rng, texts=["x"] * 4) == []
    # drop_fraction 0 still drops the single most similar unique (U - 1 cap).
    assert select_negatives(t(TARGET), t(CANDS[:4]), drop_fraction=0.0, k=3, rng=rng) == [1, 2, 3]


def test_boundary_ties_are_all_dropped():
    # Two distinct texts share the boundary rank: both go, leaving fewer than n_keep (§6 item 1).
    cands = [[1, 0], [1, 0], [0, 1], [1, 1]]
    got = select_negatives(t([1.0, 0.0]), t(cands), drop_fraction=0.25, k=2, rng=random.Random(0),
                           texts=["p", "q", "r", "s"])
    assert got == [2, 3]  # n_keep = 3, tau = rank 2 (shared by 0 and 1) -> only 2, 3 kept


@pytest.mark.parametrize("trial", range(40))
def test_random_inputs_match_reference_loop(trial):
    g = torch.Generator().manual_seed(trial)
    py = random.Random(trial)
    n, d = py.randint(1, 24), py.randint(1, 6)
    emb = torch.randn(n, d, generator=g)
    texts = [py.choice(["", " ", "u", "v", "w"]) + str(i) if py.random() < 0.7 else py.choice(["", "  ", "dup"])
             for i in range(n)]
    for i in range(n):  # copy some earlier rows (and texts) to create exact duplicates and rank ties
        if i and py.random() < 0.3:
            src = py.randrange(i)
            emb[i] = emb[src]
            if py.random() < 0.7:
                texts[i] = texts[src]
    target = torch.randn(d, generator=g)
    kwargs = {"drop_fraction": py.choice([0.0, 0.25, 0.5, 0.9]), "k": py.randint(1, 6)}
    seed = py.randrange(1000)
    for txt in (texts, None):
        got = select_negatives(target, emb, rng=random.Random(seed), texts=txt, **kwargs)
        exp = ref_select(target.tolist(), emb.tolist(), rng=random.Random(seed), texts=txt, **kwargs)
        assert got == exp
        assert got == sorted(got) and len(set(got)) == len(got) and len(got) in (0, kwargs["k"])


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": -1}, {"k": 1.5}, {"k": 2, "drop_fraction": 1.0},
                                    {"k": 2, "drop_fraction": -0.1}, {"k": 2, "drop_fraction": float("nan")}])
def test_select_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        select_negatives(t(TARGET), t(CANDS), rng=random.Random(0), **kwargs)


@pytest.mark.parametrize("target,cands,texts", [
    ([[1.0, 0.0, 0.0]], CANDS, None),   # target not [D]
    (TARGET, [[1.0, 0.0]] * 3, None),   # D mismatch
    (TARGET, [1.0, 0.0, 0.0], None),    # candidates not [N, D]
    (TARGET, CANDS, TEXTS[:-1]),        # texts length != N
])
def test_select_rejects_bad_shapes(target, cands, texts):
    with pytest.raises(ValueError):
        select_negatives(t(target), t(cands), k=1, rng=random.Random(0), texts=texts)


# ---------------------------------------------------------------- multi_negative_dpo_loss
def test_worked_example_loss():
    loss = multi_negative_dpo_loss(t(PI_C), t(PI_R), t(REF_C), t(REF_R), beta=0.1)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.716025, abs=1e-5)
    per_pair = dpo_sigmoid_loss(t(PI_C)[:, None], t(PI_R), t(REF_C)[:, None], t(REF_R), 0.1)
    assert per_pair.flatten().tolist() == pytest.approx(PER_PAIR, abs=1e-5)
    # Averaging the negatives' log-ratios inside one sigmoid is the wrong reading (docs/concepts/self-contrast.md §4).
    h = (t(PI_C) - t(REF_C)) - (t(PI_R) - t(REF_R)).mean(-1)
    assert torch.nn.functional.softplus(-0.1 * h).mean().item() == pytest.approx(0.714434, abs=1e-5)
    assert loss.item() == pytest.approx(ref_loss(PI_C, PI_R, REF_C, REF_R, 0.1), abs=1e-6)


def test_loss_default_beta_and_bf16_inputs():
    args = [torch.tensor(x, dtype=torch.bfloat16) for x in (PI_C, PI_R, REF_C, REF_R)]
    loss = multi_negative_dpo_loss(*args)  # all values exact in bf16
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(0.716025, abs=1e-5)


def test_gradient_reaches_policy_only():
    pc, pr = t(PI_C, requires_grad=True), t(PI_R, requires_grad=True)
    rc, rr = t(REF_C, requires_grad=True), t(REF_R, requires_grad=True)
    multi_negative_dpo_loss(pc, pr, rc, rr).backward()
    assert rc.grad is None and rr.grad is None
    # d/dπc of mean_bj softplus(-βz): -β σ(-βz) / (B k), summed over j.
    sig = [1 - math.exp(-x) for x in PER_PAIR]  # σ(-βz) = 1 - exp(-softplus(-βz))
    assert pc.grad.tolist() == pytest.approx([-0.1 * (sig[0] + sig[1]) / 4, -0.1 * (sig[2] + sig[3]) / 4], abs=1e-6)
    assert pr.grad.flatten().tolist() == pytest.approx([0.1 * s / 4 for s in sig], abs=1e-6)


def test_negative_mask_ignores_padding():
    mask = torch.tensor([[True, False], [True, True]])
    pr = t([[-15.0, float("nan")], [-25.0, -18.0]], requires_grad=True)
    rr = t([[-14.0, float("-inf")], [-24.5, -20.0]])
    loss = multi_negative_dpo_loss(t(PI_C), pr, t(REF_C), rr, beta=0.1, negative_mask=mask)
    assert loss.item() == pytest.approx((PER_PAIR[0] + PER_PAIR[2] + PER_PAIR[3]) / 3, abs=1e-5)
    loss.backward()
    assert torch.isfinite(pr.grad).all() and pr.grad[0, 1] == 0


@pytest.mark.parametrize("trial", range(10))
def test_random_loss_matches_reference_loop(trial):
    g = torch.Generator().manual_seed(100 + trial)
    b, k = 1 + trial % 4, 1 + trial % 5
    pc, rc = (-50 * torch.rand(b, generator=g, dtype=torch.float64) for _ in range(2))
    pr, rr = (-50 * torch.rand(b, k, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.rand(b, k, generator=g) < 0.7
    mask[0, 0] = True
    beta = [0.05, 0.1, 0.5, 2.0][trial % 4]
    got = multi_negative_dpo_loss(pc, pr, rc, rr, beta=beta, negative_mask=mask)
    exp = ref_loss(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), beta, mask.tolist())
    assert got.item() == pytest.approx(exp, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("case", ["no_valid", "mask_dtype", "mask_shape", "pc_2d", "rc_shape", "pr_1d",
                                  "rr_shape", "beta", "empty"])
def test_loss_rejects_bad_inputs(case):
    args = {"pi_chosen": t(PI_C), "pi_rejected": t(PI_R), "ref_chosen": t(REF_C), "ref_rejected": t(REF_R)}
    kw = {}
    if case == "no_valid":
        kw["negative_mask"] = torch.zeros(2, 2, dtype=torch.bool)
    elif case == "mask_dtype":
        kw["negative_mask"] = torch.ones(2, 2)
    elif case == "mask_shape":
        kw["negative_mask"] = torch.ones(2, 3, dtype=torch.bool)
    elif case == "pc_2d":
        args["pi_chosen"] = t([PI_C])
    elif case == "rc_shape":
        args["ref_chosen"] = t([-1.0])
    elif case == "pr_1d":
        args["pi_rejected"] = t(PI_C)
    elif case == "rr_shape":
        args["ref_rejected"] = t([[-1.0], [-2.0]])
    elif case == "beta":
        kw["beta"] = 0.0
    elif case == "empty":
        args = {"pi_chosen": torch.zeros(0), "pi_rejected": torch.zeros(0, 2),
                "ref_chosen": torch.zeros(0), "ref_rejected": torch.zeros(0, 2)}
    with pytest.raises(ValueError):
        multi_negative_dpo_loss(**args, **kw)


# ---------------------------------------------------------------- shared DPO helper
def test_dpo_sigmoid_loss_helper():
    out = dpo_sigmoid_loss(t([-10.0]), t([-15.0]), t([-11.0]), t([-14.0]), 0.1)
    assert out.tolist() == pytest.approx([PER_PAIR[0]], abs=1e-6)
    assert dpo_sigmoid_loss(t([1e4]), t([-1e4]), t([0.0]), t([0.0]), 1.0).item() == 0.0  # no overflow
    assert dpo_sigmoid_loss(t([-1e4]), t([1e4]), t([0.0]), t([0.0]), 1.0).item() == pytest.approx(2e4)
    with pytest.raises(ValueError):
        dpo_sigmoid_loss(t([1.0, 2.0]), t([1.0, 2.0, 3.0]), t([0.0]), t([0.0]), 0.1)
    with pytest.raises(ValueError):
        dpo_sigmoid_loss(t([1.0]), t([1.0]), t([0.0]), t([0.0]), -0.1)

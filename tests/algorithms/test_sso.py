"""Tests for selfsteer.algorithms.sso against docs/concepts/sso.md §2–§6."""

from __future__ import annotations

import math
import random

import pytest
import torch

from selfsteer.algorithms.sso import REQUIRED_KEYS, pair_rewards, preference_loss, sso_loss

V1_KEYS = ("chosen", "rejected", "chosen_pos", "rejected_pos", "raw_neg", "chosen_neg")
V2_KEYS = V1_KEYS[2:]
# docs/concepts/sso.md §6 worked example (B = 2): policy S, reference S, lengths.
POLICY = {"chosen": [-12, -30], "rejected": [-14, -40], "chosen_pos": [-9, -24],
          "rejected_pos": [-16, -45], "raw_neg": [-11, -18], "chosen_neg": [-15, -35]}
REFERENCE = {"chosen": [-13, -31], "rejected": [-13.5, -38], "chosen_pos": [-10, -26],
             "rejected_pos": [-15, -44], "raw_neg": [-12, -19.5], "chosen_neg": [-14, -33]}
LENGTHS = {"chosen": [10, 20], "rejected": [8, 25], "chosen_pos": [10, 20],
           "rejected_pos": [8, 25], "raw_neg": [12, 15], "chosen_neg": [10, 20]}
GRAD_CHOSEN = [-0.221428, -0.113617]  # ∂loss/∂policy["chosen"], v1 defaults, W not detached
V2DPO = {"variant": "v2", "base": "dpo", "beta": 0.1}


def example(dtype=torch.float32, grad=False, ref_grad=False, idx=None):
    """Worked-example dicts (int64 lengths); ``idx`` keeps one example (B = 1)."""
    sl = slice(None) if idx is None else slice(idx, idx + 1)
    mk = lambda d, rg: {k: torch.tensor(v[sl], dtype=dtype, requires_grad=rg) for k, v in d.items()}  # noqa: E731
    return mk(POLICY, grad), mk(REFERENCE, ref_grad), {k: torch.tensor(v[sl]) for k, v in LENGTHS.items()}


def close(a, b, tol=1e-5):
    """|a - b| <= tol, relative above 1 (the spec prints 6 significant digits)."""
    a = a.detach().item() if isinstance(a, torch.Tensor) else a
    return abs(a - b) <= tol * max(1.0, abs(b))


def reward_keys(*prefixes):
    return {p + s for p in prefixes for s in ("chosen", "rejected", "accuracies", "margins")}


def test_required_keys():
    assert REQUIRED_KEYS == {"v1": frozenset(V1_KEYS), "v2": frozenset(V2_KEYS)}


@pytest.mark.parametrize("kwargs,idx,expected", [
    ({}, None, {"loss": 5.36449, "loss/base": 5.54040, "loss/g": 1.07011, "w/mean": 0.811352,
                "rewards/chosen": 0.015, "rewards/rejected": -0.01425, "rewards/accuracies": 1.0,
                "rewards/margins": 0.02925}),
    ({}, 0, {"loss": 5.21527, "loss/base": 5.46391, "loss/g": 1.05426, "w/mean": 0.800113}),
    ({}, 1, {"loss": 5.51371, "loss/base": 5.61690, "loss/g": 1.08596, "w/mean": 0.822591}),
    ({"use_g": False}, None, {"loss": 4.49608, "loss/base": 5.54040, "loss/g": 0.0, "w/mean": 0.811352}),
    ({"use_w": False}, None, {"loss": 6.61051, "loss/g": 1.07011, "w/mean": 0.811352}),
    ({"use_w": False, "use_g": False}, None, {"loss": 5.54040, "loss/g": 0.0, "w/mean": 0.811352}),
    ({"base": "dpo"}, None, {"loss": 0.477334, "loss/base": (0.554355 + 0.437488) / 2,
                             "loss/g": (0.102603 + 0.0840674) / 2, "rewards/margins": 0.45,
                             "rewards/accuracies": 1.0, "rewards/chosen": 0.2, "rewards/rejected": -0.25}),
    ({"base": "dpo"}, 0, {"loss": 0.525641, "loss/base": 0.554355, "loss/g": 0.102603}),
    ({"base": "dpo"}, 1, {"loss": 0.429027, "loss/base": 0.437488, "loss/g": 0.0840674}),
    (V2DPO, None, {"loss": 1.35284, "loss/pos": (0.598139 + 0.554355) / 2,
                   "loss/neg": (0.598139 + 0.533382) / 2, "loss/sft": (0.181667 + 0.24) / 2}),
    (V2DPO, 0, {"loss": 1.37794, "loss/pos": 0.598139, "loss/neg": 0.598139, "loss/sft": 0.181667}),
    (V2DPO, 1, {"loss": 1.32774, "loss/pos": 0.554355, "loss/neg": 0.533382, "loss/sft": 0.24}),
    ({"variant": "v2"}, None, {"loss": 10.9119, "loss/pos": 5.37261, "loss/neg": 5.32847, "loss/sft": 0.210833}),
])
def test_worked_example(kwargs, idx, expected):
    loss, m = sso_loss(*example(idx=idx), **kwargs)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and close(loss, m["loss"], 1e-7)
    v1 = kwargs.get("variant", "v1") == "v1"
    assert set(m) == ({"loss", "loss/base", "loss/g", "w/mean"} | reward_keys("rewards/", "rewards_pos/", "rewards_neg/")
                      if v1 else {"loss", "loss/pos", "loss/neg", "loss/sft"} | reward_keys("rewards_pos/", "rewards_neg/"))
    assert all(type(v) is float for v in m.values())
    for key, want in expected.items():
        assert close(m[key], want), (key, m[key], want)


@pytest.mark.parametrize("kind,win,lose,h,expected", [
    ("ipo", "chosen", "rejected", [0.1625, 0.13], [5.46391, 5.61690]),
    ("ipo", "chosen_pos", "rejected_pos", [0.225, 0.14], [5.17563, 5.56960]),
    ("ipo", "raw_neg", "chosen_neg", [0.183333, 0.2], [5.36694, 5.29000]),
    ("dpo", "chosen", "rejected", [1.5, 3], [0.554355, 0.437488]),
    ("dpo", "chosen_pos", "rejected_pos", [2, 3], [0.513015, 0.437488]),
    ("dpo", "raw_neg", "chosen_neg", [2, 3.5], [0.513015, 0.403186]),
])
def test_preference_loss_pairs(kind, win, lose, h, expected):
    pol, ref, n = example(dtype=torch.float64)
    f = (lambda d, k: d[k] / n[k]) if kind == "ipo" else (lambda d, k: d[k])  # ipo on A, dpo on S (docs/concepts/sso.md §1)
    out = preference_loss(f(pol, win), f(pol, lose), f(ref, win), f(ref, lose), beta=0.2, kind=kind)
    assert out.shape == (2,)  # no averaging inside
    assert torch.allclose(out, torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    # Invert ℓ back to h: ipo (h < 1/(2β)): h = 2.5 − √ℓ; dpo: h = −log(expm1(ℓ)) / β.
    h_back = 2.5 - out.sqrt() if kind == "ipo" else -torch.log(torch.expm1(out)) / 0.2
    assert torch.allclose(h_back, torch.tensor(h, dtype=torch.float64), atol=1e-5)


def test_v2_ignores_v1_knobs_and_v1_ignores_gamma():
    base = sso_loss(*example(), variant="v2")[0].item()
    assert sso_loss(*example(), variant="v2", g_beta=7.0, w_alpha=0.1, use_w=False, use_g=False)[0].item() == base
    assert sso_loss(*example(), sft_gamma=3.0)[0].item() == sso_loss(*example())[0].item()


def test_gradient_w_not_detached():
    pol, ref, lens = example(grad=True)
    sso_loss(pol, ref, lens)[0].backward()
    assert torch.allclose(pol["chosen"].grad, torch.tensor(GRAD_CHOSEN), atol=1e-5)
    assert not torch.allclose(pol["chosen"].grad, torch.tensor([-0.187026, -0.097477]), atol=1e-3)  # detached W


@pytest.mark.parametrize("variant,base", [("v1", "ipo"), ("v1", "dpo"), ("v2", "ipo"), ("v2", "dpo")])
def test_reference_gets_no_gradient(variant, base):
    # Reference leaves require grad, so any autograd path from sso_loss or preference_loss reaches them.
    pol, ref, lens = example(grad=True, ref_grad=True)
    loss, _ = sso_loss(pol, ref, lens, variant=variant, base=base)
    loss = loss + preference_loss(*(pol[k] for k in V2_KEYS[:2]), *(ref[k] for k in V2_KEYS[:2]),
                                  beta=0.3, kind=base).sum()
    keys = sorted(REQUIRED_KEYS[variant])
    assert torch.autograd.grad(loss, [ref[k] for k in keys], allow_unused=True, retain_graph=True) == (None,) * len(keys)
    loss.backward()
    assert all(ref[k].grad is None and pol[k].grad.abs().sum() > 0 for k in keys)


def test_dpo_numerically_stable():
    big = torch.tensor([1e4, -1e4])
    out = preference_loss(big, -big, torch.zeros(2), torch.zeros(2), beta=1.0, kind="dpo")
    assert close(out[0], 0.0) and close(out[1], 2e4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_compute_dtype_at_least_float32(dtype):
    # §6 values are exact in fp16/bf16, so only a float32 computation hits the spec numbers.
    pol, ref, lens = example(dtype=dtype, grad=True)
    loss, m = sso_loss(pol, ref, lens)
    want = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == want and close(loss, 5.36449) and close(m["w/mean"], 0.811352)
    loss.backward()
    assert pol["chosen"].grad.dtype == dtype
    assert torch.allclose(pol["chosen"].grad.float(), torch.tensor(GRAD_CHOSEN), atol=2e-3)
    assert preference_loss(pol["chosen"], pol["rejected"], ref["chosen"], ref["rejected"],
                           beta=0.2, kind="ipo").dtype == want


@pytest.mark.parametrize("conv", [lambda v: torch.tensor(v, dtype=torch.int32),
                                  lambda v: torch.tensor(v, dtype=torch.float32), list])
def test_lengths_int_or_float(conv):
    pol, ref, _ = example()
    assert close(sso_loss(pol, ref, {k: conv(v) for k, v in LENGTHS.items()})[0], 5.36449)


def test_extra_keys_ignored():
    pol, ref, lens = example()
    for d in (pol, ref, lens):  # wrong shape on purpose: extras are not even validated
        d["raw"] = d["other"] = torch.zeros(4, 4)
    assert close(sso_loss(pol, ref, lens)[0], 5.36449)
    for d in (pol, ref, lens):  # v2 does not need the x pair at all
        del d["chosen"], d["rejected"]
    assert close(sso_loss(pol, ref, lens, **V2DPO)[0], 1.35284)


@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_missing_key_raises_keyerror_naming_it(variant, which):
    for key in REQUIRED_KEYS[variant]:
        dicts = example()
        del dicts[which][key]
        with pytest.raises(KeyError, match=key):
            sso_loss(*dicts, variant=variant)


def _set(which, key, value):
    dicts = example()
    dicts[which][key] = value
    return lambda: sso_loss(*dicts)


_T = torch.zeros(2)
VALUE_ERRORS = (  # (call, text the message must contain)
    [(_set(w, "chosen_neg", v), "chosen_neg") for w in range(3)
     for v in (torch.tensor(3.0), torch.ones(2, 1), torch.ones(1, 2), torch.ones(3))]
    + [(_set(2, "raw_neg", torch.tensor(b)), "lengths") for b in ([0, 5], [10, -1], [math.nan, 3.0])]
    + [(lambda b=b: sso_loss(*example(), beta=b), "beta") for b in (0.0, -0.1, math.nan)]
    + [(lambda b=b: preference_loss(_T, _T, _T, _T, beta=b, kind="dpo"), "beta") for b in (0.0, -0.1, math.nan)]
    + [(lambda: sso_loss(*example(), variant="v3"), "variant"), (lambda: sso_loss(*example(), base="kto"), "base"),
       (lambda: preference_loss(_T, _T, _T, _T, beta=0.1, kind="sigmoid"), "kind"),
       (lambda: preference_loss(_T, _T, _T, torch.zeros(3), beta=0.1, kind="ipo"), "ref_rejected"),
       (lambda: preference_loss(torch.zeros(2, 1), _T, _T, _T, beta=0.1, kind="ipo"), "pi_chosen"),
       (lambda: sso_loss(*({k: torch.zeros(0) for k in V1_KEYS},) * 3), "empty")])


@pytest.mark.parametrize("call,match", VALUE_ERRORS)
def test_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_pair_rewards_direct():
    m = pair_rewards(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.zeros(2), torch.zeros(2),
                     beta=0.5, prefix="x/")
    assert m == {"x/chosen": 0.25, "x/rejected": 0.25, "x/accuracies": 0.5, "x/margins": 0.0}


def scalar_sso(P, R, N, variant, base, beta, g_beta, w_alpha, use_w, use_g, gamma):
    """Slow plain-Python loop written straight from docs/concepts/sso.md §2–§5 (lists in, floats out)."""
    B, sig = len(P["chosen_pos"]), lambda z: 1.0 / (1.0 + math.exp(-z))
    f = (lambda d, k, i: d[k][i] / N[k][i]) if base == "ipo" else (lambda d, k, i: d[k][i])
    pairs = {"rewards_pos/": ("chosen_pos", "rejected_pos"), "rewards_neg/": ("raw_neg", "chosen_neg")}
    if variant == "v1":
        pairs["rewards/"] = ("chosen", "rejected")
    m, ell = {}, {}
    for pre, (w, l) in pairs.items():
        rc = [beta * (f(P, w, i) - f(R, w, i)) for i in range(B)]
        rr = [beta * (f(P, l, i) - f(R, l, i)) for i in range(B)]
        m.update({pre + "chosen": sum(rc) / B, pre + "rejected": sum(rr) / B,
                  pre + "accuracies": sum(a > b for a, b in zip(rc, rr)) / B,
                  pre + "margins": sum(a - b for a, b in zip(rc, rr)) / B})
        h = [(f(P, w, i) - f(P, l, i)) - (f(R, w, i) - f(R, l, i)) for i in range(B)]
        ell[pre] = [-math.log(sig(beta * x)) if base == "dpo" else (x - 1 / (2 * beta)) ** 2 for x in h]
    per, parts = [], {}
    for i in range(B):
        lp, ln = ell["rewards_pos/"][i], ell["rewards_neg/"][i]
        if variant == "v1":
            lb, g = ell["rewards/"][i], g_beta * (lp + ln)
            w = sig(-(w_alpha * P["chosen"][i] / N["chosen"][i] + (1 - w_alpha) * P["rejected"][i] / N["rejected"][i]))
            per.append((w if use_w else 1.0) * (lb + (g if use_g else 0.0)))
            terms = {"loss/base": lb, "loss/g": g if use_g else 0.0, "w/mean": w}
        else:
            sft = -gamma * (P["chosen_pos"][i] / N["chosen_pos"][i] + P["raw_neg"][i] / N["raw_neg"][i])
            per.append(lp + ln + sft)
            terms = {"loss/pos": lp, "loss/neg": ln, "loss/sft": sft}
        for k, v in terms.items():
            parts[k] = parts.get(k, 0.0) + v / B
    return {**m, **parts, "loss": sum(per) / B}


def _random_batch(rng, B):
    N = {k: [rng.randint(1, 40) for _ in range(B)] for k in V1_KEYS}
    return ({k: [-rng.uniform(0.05, 3.0) * n for n in N[k]] for k in V1_KEYS},
            {k: [-rng.uniform(0.05, 3.0) * n for n in N[k]] for k in V1_KEYS}, N)


@pytest.mark.parametrize("seed", range(6))
def test_matches_scalar_reference_loop(seed):
    rng = random.Random(seed)
    P, R, N = _random_batch(rng, rng.randint(1, 7))
    to = lambda d, dt: {k: torch.tensor(v, dtype=dt) for k, v in d.items()}  # noqa: E731
    for variant in ("v1", "v2"):
        for base in ("dpo", "ipo"):
            for use_w, use_g in ((True, True), (True, False), (False, True), (False, False)):
                kw = dict(variant=variant, base=base, beta=rng.uniform(0.02, 1.0), g_beta=rng.uniform(0, 1),
                          w_alpha=rng.uniform(0, 1), use_w=use_w, use_g=use_g, sft_gamma=rng.uniform(0, 0.5))
                want = scalar_sso(P, R, N, gamma=kw["sft_gamma"], **{k: v for k, v in kw.items() if k != "sft_gamma"})
                _, got = sso_loss(to(P, torch.float64), to(R, torch.float64), to(N, torch.int64), **kw)
                assert set(got) == set(want)
                for k in want:
                    assert math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-9), (k, kw)
                l32, _ = sso_loss(to(P, torch.float32), to(R, torch.float32), to(N, torch.float32), **kw)
                assert math.isclose(l32.item(), want["loss"], rel_tol=1e-5, abs_tol=1e-5), kw


@pytest.mark.parametrize("variant,base", [("v1", "ipo"), ("v1", "dpo"), ("v2", "dpo"), ("v2", "ipo")])
def test_gradient_matches_finite_differences_of_scalar_loop(variant, base):
    P, R, N = _random_batch(random.Random(7), 3)
    kw = dict(variant=variant, base=base, beta=0.3, g_beta=0.2, w_alpha=0.6, use_w=True, use_g=True)
    pol = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in P.items()}
    sso_loss(pol, {k: torch.tensor(v, dtype=torch.float64) for k, v in R.items()}, N, sft_gamma=0.1, **kw)[0].backward()
    eps = 1e-6
    for k in REQUIRED_KEYS[variant]:
        for i in range(3):
            shifted = [{kk: [x + (s * eps if (kk, j) == (k, i) else 0.0) for j, x in enumerate(v)]
                        for kk, v in P.items()} for s in (1, -1)]
            hi, lo = (scalar_sso(Q, R, N, gamma=0.1, **kw)["loss"] for Q in shifted)
            assert math.isclose(pol[k].grad[i].item(), (hi - lo) / (2 * eps), rel_tol=1e-5, abs_tol=1e-7), (k, i)

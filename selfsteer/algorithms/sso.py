"""SSO (Self-Steering Optimization) losses: ``docs/concepts/sso.md`` §2–§5.

Pure tensor functions; no model calls. Inputs are per-example *summed*
response log-probs ``S`` (policy with grad, reference frozen) and token
counts ``n``; the ``ipo`` base works on averages ``A = S / n``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BASES", "REQUIRED_KEYS", "pair_rewards", "preference_loss", "sso_loss"]

BASES = ("dpo", "ipo")

#: Score keys each variant reads (docs/concepts/sso.md §5 table); any other key is ignored.
REQUIRED_KEYS: dict[str, frozenset[str]] = {
    "v1": frozenset({"chosen", "rejected", "chosen_pos", "rejected_pos", "raw_neg", "chosen_neg"}),
    "v2": frozenset({"chosen_pos", "rejected_pos", "raw_neg", "chosen_neg"}),
}

# pair -> (winner key, loser key, metric prefix). The x- pair is y^o ≻ y+ (docs/concepts/sso.md §3).
_PAIRS = {
    "base": ("chosen", "rejected", "rewards/"),
    "pos": ("chosen_pos", "rejected_pos", "rewards_pos/"),
    "neg": ("raw_neg", "chosen_neg", "rewards_neg/"),
}


def _upcast(t: Tensor) -> Tensor:
    """Returns ``t`` in at least float32 (half/bf16/int inputs are upcast)."""
    if t.dtype in (torch.float32, torch.float64):
        return t
    return t.to(torch.float32)


def _check_beta(beta: float) -> None:
    if not beta > 0:  # also rejects NaN
        raise ValueError(f"beta must be > 0, got {beta!r}")


def _check_kind(kind: str, what: str = "kind") -> None:
    if kind not in BASES:
        raise ValueError(f"unknown {what} {kind!r}; expected one of {BASES}")


def _check_same_1d(named: Mapping[str, Tensor]) -> None:
    shape = None
    for name, t in named.items():
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D [B], got shape {tuple(t.shape)}")
        if shape is None:
            shape = t.shape
        elif t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def preference_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    kind: str,
) -> Tensor:
    """Per-example base preference loss (docs/concepts/sso.md §2), no reduction.

    With ``h = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)``:
    ``dpo`` is ``softplus(-beta * h)`` (= ``-log σ(beta h)``, stable for large
    ``|h|``) and ``ipo`` is ``(h - 1 / (2 beta))**2``. The caller picks the
    score form (sums ``S`` or averages ``A``).

    Args:
        pi_chosen: Policy scores of the preferred responses, shape ``[B]``.
        pi_rejected: Policy scores of the dispreferred responses, ``[B]``.
        ref_chosen: Reference scores of the preferred responses, ``[B]``;
            detached here, so no gradient reaches the reference.
        ref_rejected: Reference scores of the dispreferred responses, ``[B]``.
        beta: Inverse temperature, ``> 0``.
        kind: ``"dpo"`` or ``"ipo"``.

    Returns:
        Loss per example, shape ``[B]``, in at least float32.

    Raises:
        ValueError: Unknown ``kind``, ``beta <= 0``, non-1-D or mismatched inputs.
    """
    _check_kind(kind)
    _check_beta(beta)
    _check_same_1d({"pi_chosen": pi_chosen, "pi_rejected": pi_rejected,
                    "ref_chosen": ref_chosen, "ref_rejected": ref_rejected})
    pi_c, pi_r = _upcast(pi_chosen), _upcast(pi_rejected)
    ref_c, ref_r = _upcast(ref_chosen.detach()), _upcast(ref_rejected.detach())
    h = (pi_c - pi_r) - (ref_c - ref_r)
    if kind == "dpo":
        return F.softplus(-beta * h)
    return (h - 1.0 / (2.0 * beta)) ** 2


@torch.no_grad()
def pair_rewards(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    prefix: str = "rewards/",
) -> dict[str, float]:
    """Implicit-reward metrics of one preference pair (docs/concepts/sso.md §2), detached.

    Args:
        pi_chosen, pi_rejected: Policy scores of the pair, shape ``[B]`` each.
        ref_chosen, ref_rejected: Reference scores of the pair, ``[B]`` each.
        beta: Reward scale (the base ``beta``).
        prefix: Metric-name prefix, e.g. ``"rewards_pos/"``.

    Returns:
        ``{prefix + k: float}`` for ``k`` in ``chosen`` (mean ``r_c``),
        ``rejected`` (mean ``r_r``), ``accuracies`` (mean ``1[r_c > r_r]``),
        ``margins`` (mean ``r_c - r_r``) with ``r = beta (pi - ref)``.
    """
    r_c = beta * (_upcast(pi_chosen) - _upcast(ref_chosen))
    r_r = beta * (_upcast(pi_rejected) - _upcast(ref_rejected))
    return {
        prefix + "chosen": r_c.mean().item(),
        prefix + "rejected": r_r.mean().item(),
        prefix + "accuracies": (r_c > r_r).to(r_c.dtype).mean().item(),
        prefix + "margins": (r_c - r_r).mean().item(),
    }


def _gather(
    policy: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    lengths: Mapping[str, Tensor],
    keys: list[str],
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Validates the required entries and returns them upcast (reference detached)."""
    for src_name, src in (("policy", policy), ("reference", reference), ("lengths", lengths)):
        for k in keys:
            if k not in src:
                raise KeyError(f"{src_name} is missing required key {k!r}")
    named: dict[str, Tensor] = {}
    for k in keys:
        named[f"policy[{k!r}]"] = policy[k]
        named[f"reference[{k!r}]"] = reference[k]
        named[f"lengths[{k!r}]"] = torch.as_tensor(lengths[k])
    _check_same_1d(named)
    if next(iter(named.values())).numel() == 0:
        raise ValueError("empty batch (B = 0)")
    pol = {k: _upcast(policy[k]) for k in keys}
    ref = {k: _upcast(reference[k].detach()) for k in keys}
    n: dict[str, Tensor] = {}
    for k in keys:
        nk = named[f"lengths[{k!r}]"].to(device=pol[k].device, dtype=pol[k].dtype)
        if not bool((nk > 0).all()):  # NaN fails too
            raise ValueError(f"lengths[{k!r}] must be > 0, got {nk.tolist()}")
        n[k] = nk
    return pol, ref, n


def sso_loss(
    policy: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    lengths: Mapping[str, Tensor],
    *,
    variant: str = "v1",
    base: str = "ipo",
    beta: float = 0.2,
    g_beta: float = 0.1,
    w_alpha: float = 0.66,
    use_w: bool = True,
    use_g: bool = True,
    sft_gamma: float = 0.1,
) -> tuple[Tensor, dict[str, float]]:
    """SSO training loss, v1 (docs/concepts/sso.md §3) or v2 (§4); API per §5.

    v1: ``mean(W * (L_b + G))`` with ``G = g_beta (L_p + L_n)`` and
    ``W = σ(-(w_alpha A(y+|x) + (1 - w_alpha) A(y-|x)))``; ``use_g`` / ``use_w``
    drop G / W. v2: ``mean(L_p + L_n - sft_gamma (A(y+|x+) + A(y^o|x-)))``.
    ``L_b``, ``L_p``, ``L_n`` are the ``chosen≻rejected``,
    ``chosen_pos≻rejected_pos`` and ``raw_neg≻chosen_neg`` pairs, all with ``beta``.

    Args:
        policy: Key -> summed policy log-probs ``[B]`` (gradient flows); keys
            per :data:`REQUIRED_KEYS`, extras ignored.
        reference: Same keys, frozen-reference sums ``[B]`` (detached).
        lengths: Same keys, scored token counts ``[B]`` (int or float, > 0).
        variant: ``"v1"`` or ``"v2"``.
        base: ``"ipo"`` (pairs on averages ``A = S / n``) or ``"dpo"`` (sums).
        beta: Base-loss beta (also used by the G pairs), ``> 0``.
        g_beta: v1 weight of G.
        w_alpha: v1 mixing weight α of W.
        use_w: v1: multiply by W (not detached, as in both official codes).
        use_g: v1: add G.
        sft_gamma: v2 SFT weight γ.

    Returns:
        ``(loss, metrics)``: scalar loss (≥ float32, differentiable w.r.t.
        ``policy``) and python-float metrics (docs/concepts/sso.md §5 key list).

    Raises:
        KeyError: A required key is missing (message names it).
        ValueError: Unknown variant/base, ``beta <= 0``, non-1-D or mismatched
            tensors, ``lengths <= 0``, or an empty batch.
    """
    if variant not in REQUIRED_KEYS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(REQUIRED_KEYS)}")
    _check_kind(base, "base")
    _check_beta(beta)
    pol, ref, n = _gather(policy, reference, lengths, sorted(REQUIRED_KEYS[variant]))
    # W and SFT always use policy averages; preference terms use A only for ipo
    # (LLaMA-Factory rule, docs/concepts/sso.md §1).
    avg = {k: pol[k] / n[k] for k in pol}
    pi, rho = (avg, {k: ref[k] / n[k] for k in ref}) if base == "ipo" else (pol, ref)

    metrics: dict[str, float] = {}

    def pair(name: str) -> Tensor:
        win, lose, prefix = _PAIRS[name]
        args = (pi[win], pi[lose], rho[win], rho[lose])
        metrics.update(pair_rewards(*args, beta=beta, prefix=prefix))
        return preference_loss(*args, beta=beta, kind=base)

    if variant == "v1":
        l_b, l_p, l_n = pair("base"), pair("pos"), pair("neg")
        g = g_beta * (l_p + l_n)
        w = torch.sigmoid(-(w_alpha * avg["chosen"] + (1.0 - w_alpha) * avg["rejected"]))
        bracket = l_b + g if use_g else l_b
        loss = (w * bracket if use_w else bracket).mean()
        metrics.update({
            "loss/base": l_b.mean().item(),
            "loss/g": g.mean().item() if use_g else 0.0,
            "w/mean": w.mean().item(),
        })
    else:
        l_p, l_n = pair("pos"), pair("neg")
        sft = -sft_gamma * (avg["chosen_pos"] + avg["raw_neg"])
        loss = (l_p + l_n + sft).mean()
        metrics.update({
            "loss/pos": l_p.mean().item(),
            "loss/neg": l_n.mean().item(),
            "loss/sft": sft.mean().item(),
        })
    metrics["loss"] = loss.item()
    return loss, metrics

"""SIPO (Self-Improvement towards Pareto Optimality): MOD fusion, filters, loss.

``docs/concepts/sipo.md`` §2 (formulas as implemented by zyttt-coder/SIPO)
and §3 (this API). Pure torch; no model calls, no Ray.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsteer.algorithms.dpo import dpo_sigmoid_loss, upcast

__all__ = [
    "fuse_logits",
    "implicit_rewards",
    "keep_rewrite",
    "pareto_filter",
    "select_pareto_best",
    "sipo_loss",
    "trainer_loss",
]


def _check_same_shape(a: Tensor, b: Tensor, aname: str, bname: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{aname} has shape {tuple(a.shape)} but {bname} has {tuple(b.shape)}")


def fuse_logits(logits_a: Tensor, logits_b: Tensor, weight: float) -> Tensor:
    """MOD next-token logits ``w·z_A + (1-w)·z_B`` (docs/concepts/sipo.md §2, ``f_type=reverse_kl``).

    Both vocabularies are truncated to the smaller one. Fusing raw logits or
    log-softmaxes gives the same argmax and softmax (they differ by a constant).

    Args:
        logits_a: Policy A logits, ``[..., Va]``; ``weight`` multiplies A.
        logits_b: Policy B logits, ``[..., Vb]``, same leading dims.
        weight: ``w`` in ``[0, 1]``.

    Returns:
        ``[..., min(Va, Vb)]`` float32.

    Raises:
        ValueError: ``weight`` outside ``[0, 1]`` or leading dims differ.
    """
    if not 0.0 <= weight <= 1.0:  # also rejects NaN
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    if logits_a.dim() == 0 or logits_a.shape[:-1] != logits_b.shape[:-1]:
        raise ValueError(f"leading dims differ: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    v = min(logits_a.shape[-1], logits_b.shape[-1])
    a = logits_a[..., :v].float()
    b = logits_b[..., :v].float()
    # Endpoints return one model exactly: 0 * (-inf) from masked vocab would be NaN.
    if weight == 1.0:
        return a.clone()
    if weight == 0.0:
        return b.clone()
    return weight * a + (1.0 - weight) * b


def implicit_rewards(policy_logps: Tensor, sft_logps: Tensor, *, beta: float = 0.1) -> Tensor:
    """DPO implicit reward ``R_j(x, y) = β(log π_j(y|x) - log π_sft(y|x))`` (docs/concepts/sipo.md §2).

    Args:
        policy_logps: Summed response log-probs (incl. EOS) under ``π_j``, any shape.
        sft_logps: Summed log-probs under ``π_sft``, same shape.
        beta: ``β > 0`` (0.1 in the official code).

    Returns:
        Same shape, in at least float32 (not detached: callers run these
        frozen forwards under ``no_grad``).

    Raises:
        ValueError: Shapes differ or ``beta <= 0``.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    _check_same_shape(policy_logps, sft_logps, "policy_logps", "sft_logps")
    return beta * (upcast(policy_logps) - upcast(sft_logps))


def pareto_filter(candidate_rewards: Tensor, original_rewards: Tensor) -> Tensor:
    """Candidates that strictly beat every original on every reward model (docs/concepts/sipo.md §2).

    Args:
        candidate_rewards: ``[..., N, M]``, M reward models (A⁰, B⁰, soups).
        original_rewards: ``[..., K, M]`` (K = 2 originals ``y1, y2``), same
            leading dims and M.

    Returns:
        Bool ``[..., N]``: ``all_{k,m} cand[n, m] > orig[k, m]``. A tie fails.

    Raises:
        ValueError: Fewer than 2 dims, or leading dims / M differ.
    """
    if candidate_rewards.dim() < 2 or original_rewards.dim() < 2:
        raise ValueError("pareto_filter needs [..., N, M] and [..., K, M] tensors")
    if (candidate_rewards.shape[:-2] != original_rewards.shape[:-2]
            or candidate_rewards.shape[-1] != original_rewards.shape[-1]):
        raise ValueError(f"shapes disagree: candidates {tuple(candidate_rewards.shape)}, "
                         f"originals {tuple(original_rewards.shape)}")
    beats = candidate_rewards[..., :, None, :] > original_rewards[..., None, :, :]  # [..., N, K, M]
    return beats.flatten(-2).all(-1)


def select_pareto_best(candidate_rewards: Tensor, mask: Tensor) -> int | None:
    """Index of the passing candidate with the largest reward sum (docs/concepts/sipo.md §2).

    At most one candidate per prompt is kept.

    Args:
        candidate_rewards: ``[N, M]``.
        mask: Bool ``[N]``, e.g. from :func:`pareto_filter`.

    Returns:
        ``argmax_n Σ_m R[n, m]`` over ``mask`` (lowest index on ties), or
        ``None`` if no candidate passes.

    Raises:
        ValueError: Shapes disagree or ``mask`` is not bool.
    """
    if candidate_rewards.dim() != 2 or mask.shape != candidate_rewards.shape[:1]:
        raise ValueError(f"expected [N, M] and [N], got {tuple(candidate_rewards.shape)} "
                         f"and {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    passing = mask.nonzero().flatten()
    if passing.numel() == 0:
        return None
    sums = upcast(candidate_rewards.detach())[passing].sum(-1)
    # torch.argmax returns the first maximum; `passing` is ascending -> lowest index.
    return int(passing[int(sums.argmax())])


def keep_rewrite(rewrite_rewards: Tensor, mod_rewards: Tensor) -> Tensor:
    """Keep the rewrite ``y'`` over its MOD sample ``y`` (docs/concepts/sipo.md §2, §6.5).

    Args:
        rewrite_rewards: ``[N, M]`` rewards of the rewrites (M = 2: A⁰, B⁰).
        mod_rewards: ``[N, M]`` rewards of the MOD samples they revise.

    Returns:
        Bool ``[N]``: ``any_m rewrite[n, m] > mod[n, m]`` (strict; equal is not kept).

    Raises:
        ValueError: Shapes differ or are not 2-D.
    """
    _check_same_shape(rewrite_rewards, mod_rewards, "rewrite_rewards", "mod_rewards")
    if rewrite_rewards.dim() != 2:
        raise ValueError(f"expected [N, M] tensors, got {tuple(rewrite_rewards.shape)}")
    return (rewrite_rewards > mod_rewards).any(-1)


def sipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.1,
) -> Tensor:
    """Re-alignment loss: sigmoid DPO + length-normalised NLL of the chosen (docs/concepts/sipo.md §2).

    ``L = mean_b [softplus(-β((πc - rc) - (πr - rr))) - α·πc/ℓ_c]``.

    Args:
        policy_chosen_logps: Summed policy log-probs of the candidate ``c``, ``[B]``.
        policy_rejected_logps: Summed policy log-probs of ``y1``/``y2``, ``[B]``.
        ref_chosen_logps: Reference (``π_X⁰``) sums of ``c``, ``[B]`` (detached).
        ref_rejected_logps: Reference sums of the rejected, ``[B]`` (detached).
        chosen_lengths: ``ℓ_c > 0``, ``[B]`` (int or float): chosen response
            tokens incl. EOS; pass the official padded length for parity (docs/concepts/sipo.md §6.1).
        beta: DPO inverse temperature, ``> 0``.
        alpha: NLL weight (official script default 1, spec value 0.1).

    Returns:
        Scalar loss in at least float32; gradients reach only the policy terms.

    Raises:
        ValueError: Non-1-D or mismatched inputs, ``B = 0``, ``beta <= 0``, or
            a length ``<= 0``.
    """
    named = {"policy_chosen_logps": policy_chosen_logps, "policy_rejected_logps": policy_rejected_logps,
             "ref_chosen_logps": ref_chosen_logps, "ref_rejected_logps": ref_rejected_logps,
             "chosen_lengths": chosen_lengths}
    for name, t in named.items():
        if t.dim() != 1 or t.shape != policy_chosen_logps.shape:
            raise ValueError(f"{name} must be 1-D like policy_chosen_logps "
                             f"{tuple(policy_chosen_logps.shape)}, got {tuple(t.shape)}")
    if policy_chosen_logps.numel() == 0:
        raise ValueError("empty batch (B = 0)")
    pi_c = upcast(policy_chosen_logps)
    lengths = chosen_lengths.detach().to(device=pi_c.device, dtype=pi_c.dtype)
    if not bool((lengths > 0).all()):  # NaN fails too
        raise ValueError(f"chosen_lengths must be > 0, got {lengths.tolist()}")
    dpo = dpo_sigmoid_loss(pi_c, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return (dpo - alpha * pi_c / lengths).mean()


def trainer_loss(policy, reference, lengths, *, beta: float, alpha: float):
    """The trainer's loss for algo=sipo (algorithms.registry): sipo_loss with the chosen response's
    token count (incl. EOS) as ℓ_c."""
    value = sipo_loss(policy["chosen"], policy["rejected"], reference["chosen"], reference["rejected"],
                      lengths["chosen"].float(), beta=beta, alpha=alpha)
    margin = (policy["chosen"] - reference["chosen"]) - (policy["rejected"] - reference["rejected"])
    return value, {"loss": value.item(), "rewards/margins": beta * margin.mean().item(),
                   "rewards/accuracies": (margin > 0).float().mean().item()}

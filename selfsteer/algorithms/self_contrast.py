"""Self-Contrast: negative selection and multi-negative DPO loss.

``docs/concepts/self-contrast.md`` §2 (formulas as implemented by
THUDM/Self-Contrast, mode ``lastdedup``) and §3 (this API). Pure torch and
``random``; no model calls, no Ray, no I/O.
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Sequence

import torch
from torch import Tensor

from selfsteer.algorithms.dpo import dpo_sigmoid_loss, upcast

__all__ = ["cosine_similarities", "multi_negative_dpo_loss", "select_negatives", "trainer_loss"]

_COS_EPS = 1e-8


def cosine_similarities(target: Tensor, candidates: Tensor) -> Tensor:
    """Cosine similarity of each candidate to ``target`` (docs/concepts/self-contrast.md §2).

    ``s_i = e*·e_i / max(‖e*‖ ‖e_i‖, 1e-8)`` on raw float32 embeddings: the
    eps clamps the *product* of norms, as in the official code.

    Args:
        target: ``[D]``.
        candidates: ``[N, D]``.

    Returns:
        ``[N]`` float32.
    """
    t = target.detach().to(torch.float32)
    c = candidates.detach().to(torch.float32)
    # Row-wise mul+sum (not a matmul) so identical rows give bit-identical s.
    dots = (c * t).sum(-1)
    norms = c.norm(dim=-1) * t.norm()
    return dots / norms.clamp_min(_COS_EPS)


def _unique_indices(candidates: Tensor, texts: Sequence[str] | None, dup_threshold: float) -> list[int]:
    """Rollout-order indices of first occurrences (docs/concepts/self-contrast.md §2 step 1)."""
    if texts is not None:
        seen: set[str] = set()
        out = []
        for i, text in enumerate(texts):
            if text not in seen:
                seen.add(text)
                out.append(i)
        return out
    # Without texts: j duplicates an earlier *kept* i when cos(e_i, e_j) >= threshold.
    out = []
    for j in range(candidates.shape[0]):
        if out:
            sims = cosine_similarities(candidates[j], candidates[out])
            if bool((sims >= dup_threshold).any()):
                continue
        out.append(j)
    return out


def select_negatives(
    target_embedding: Tensor,
    candidate_embeddings: Tensor,
    *,
    drop_fraction: float = 0.25,
    k: int,
    rng: random.Random,
    texts: Sequence[str] | None = None,
    dup_threshold: float = 1.0 - 1e-6,
) -> list[int]:
    """Picks ``k`` negatives for one prompt, official ``lastdedup`` mode (docs/concepts/self-contrast.md §2–§3).

    Ranks the samples by similarity to the SFT target, removes duplicates,
    drops the most target-like uniques (they may be as good as ``y*``), drops
    empty texts, then draws ``k`` of the rest uniformly.

    Args:
        target_embedding: Embedding of the target ``y*``, ``[D]``.
        candidate_embeddings: Sample embeddings in rollout order, ``[N, D]``.
        drop_fraction: Share of the ``N`` samples to cut, in ``[0, 1)``;
            keep ratio is ``1 - drop_fraction`` (0.25 ↔ ``lastdedup-75``).
        k: Negatives wanted, ``>= 1``.
        rng: Consumed by exactly one ``rng.sample(range(m), k)`` call, and only
            when ``m >= k`` candidates survive.
        texts: Sample texts, ``len N``. If given, duplicates are exact string
            matches and texts with ``text.lstrip(' ') == ''`` are removed after
            the cut (official). If ``None``, duplicates are found by embedding
            cosine and nothing counts as empty.
        dup_threshold: Embedding-dedup cosine threshold (only without ``texts``).

    Returns:
        ``k`` original candidate indices, ascending, or ``[]`` when fewer than
        ``k`` negatives survive (the prompt then gives no pairs this round).

    Raises:
        ValueError: ``k < 1``, ``drop_fraction`` outside ``[0, 1)``, or shapes
            (``[D]``, ``[N, D]``, ``len(texts) == N``) that disagree.
    """
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an integer, got {k!r}") from None
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 <= drop_fraction < 1.0:  # also rejects NaN
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction!r}")
    if target_embedding.dim() != 1:
        raise ValueError(f"target_embedding must be [D], got shape {tuple(target_embedding.shape)}")
    if candidate_embeddings.dim() != 2 or candidate_embeddings.shape[1] != target_embedding.shape[0]:
        raise ValueError(f"candidate_embeddings must be [N, {target_embedding.shape[0]}], "
                         f"got shape {tuple(candidate_embeddings.shape)}")
    n = candidate_embeddings.shape[0]
    if texts is not None and len(texts) != n:
        raise ValueError(f"{len(texts)} texts for {n} candidate embeddings")

    sims = cosine_similarities(target_embedding, candidate_embeddings)
    # ρ_i = #{j : s_j < s_i} over all N samples: ties share the lower rank (docs/concepts/self-contrast.md §6.1).
    ranks = (sims[None, :] < sims[:, None]).sum(-1).tolist()

    uniques = _unique_indices(candidate_embeddings, texts, dup_threshold)
    if not uniques:
        return []
    # Pre-dedup N (docs/concepts/self-contrast.md §6.2); the U - 1 cap always drops the most similar unique.
    n_keep = min(math.floor(n * (1.0 - drop_fraction) + 1e-9), len(uniques) - 1)
    tau = sorted(ranks[i] for i in uniques)[n_keep]
    kept = [i for i in uniques if ranks[i] < tau]  # boundary ties all dropped
    if texts is not None:
        # Empties are removed only now: they already took slots in the cut (docs/concepts/self-contrast.md §6.3).
        kept = [i for i in kept if texts[i].lstrip(" ") != ""]
    if len(kept) < k:
        return []
    return [kept[p] for p in sorted(rng.sample(range(len(kept)), k))]


def multi_negative_dpo_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float = 0.1,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Mean sigmoid-DPO loss over all valid (target, negative) pairs (docs/concepts/self-contrast.md §2–§3).

    ``ℓ_bj = softplus(-β[(πc_b - rc_b) - (πr_bj - rr_bj)])`` and the result is
    the mean of ``ℓ_bj`` over valid pairs: per-pair *losses* are averaged, not
    negative log-ratios inside one sigmoid (docs/concepts/self-contrast.md §4 shows the difference).

    Args:
        pi_chosen: Policy summed log-probs of ``y*``, ``[B]``.
        pi_rejected: Policy summed log-probs of the negatives, ``[B, k]``.
        ref_chosen: Reference summed log-probs of ``y*``, ``[B]`` (detached).
        ref_rejected: Reference summed log-probs of the negatives, ``[B, k]``
            (detached).
        beta: DPO inverse temperature, ``> 0``.
        negative_mask: Bool ``[B, k]``, True on valid pairs; all valid if None.
            Values at invalid slots are ignored (may be NaN/inf padding).

    Returns:
        Scalar loss in at least float32; gradient flows through the π terms only.

    Raises:
        ValueError: Shapes disagree, ``beta <= 0``, non-bool mask, or no valid pair.
    """
    if pi_chosen.dim() != 1:
        raise ValueError(f"pi_chosen must be [B], got shape {tuple(pi_chosen.shape)}")
    b = pi_chosen.shape[0]
    if ref_chosen.shape != pi_chosen.shape:
        raise ValueError(f"ref_chosen has shape {tuple(ref_chosen.shape)}, expected ({b},)")
    if pi_rejected.dim() != 2 or pi_rejected.shape[0] != b:
        raise ValueError(f"pi_rejected must be [{b}, k], got shape {tuple(pi_rejected.shape)}")
    if ref_rejected.shape != pi_rejected.shape:
        raise ValueError(f"ref_rejected has shape {tuple(ref_rejected.shape)}, "
                         f"expected {tuple(pi_rejected.shape)}")
    if negative_mask is None:
        negative_mask = torch.ones(pi_rejected.shape, dtype=torch.bool, device=pi_rejected.device)
    elif negative_mask.dtype != torch.bool or negative_mask.shape != pi_rejected.shape:
        raise ValueError(f"negative_mask must be bool {tuple(pi_rejected.shape)}, "
                         f"got {negative_mask.dtype} {tuple(negative_mask.shape)}")
    count = int(negative_mask.sum())
    if count == 0:
        raise ValueError("multi_negative_dpo_loss: no valid (chosen, negative) pair")
    # Zero invalid slots first: padding NaN/inf would otherwise poison the backward pass.
    pi_r = upcast(pi_rejected).masked_fill(~negative_mask, 0.0)
    ref_r = upcast(ref_rejected.detach()).masked_fill(~negative_mask, 0.0)
    per_pair = dpo_sigmoid_loss(pi_chosen[:, None], pi_r, ref_chosen[:, None], ref_r, beta)
    return per_pair.masked_fill(~negative_mask, 0.0).sum() / count


def trainer_loss(policy: dict, reference: dict, lengths: dict, *, beta: float):
    """The trainer's loss for algo=self_contrast (algorithms.registry): mean DPO loss over each example's k (y*, negative) pairs."""
    negs = sorted((k for k in policy if k.startswith("neg_")), key=lambda k: int(k[4:]))
    pi_r = torch.stack([policy[k] for k in negs], 1)
    ref_r = torch.stack([reference[k] for k in negs], 1)
    value = multi_negative_dpo_loss(policy["chosen"], pi_r, reference["chosen"], ref_r, beta=beta)
    with torch.no_grad():
        chosen_reward = beta * (policy["chosen"] - reference["chosen"])
        rejected_reward = beta * (pi_r - ref_r)
        margins = chosen_reward[:, None] - rejected_reward
    return value, {"loss": value.item(), "rewards/chosen": chosen_reward.mean().item(),
                   "rewards/rejected": rejected_reward.mean().item(), "rewards/margins": margins.mean().item(),
                   "rewards/accuracies": (margins > 0).float().mean().item()}

"""SePO (Selective Preference Optimization): token rewards, selection, loss.

``docs/concepts/sepo.md`` §2 (formulas as implemented by SteveKGYang/SePO)
and §3 (this API). Pure torch; no model calls, no Ray.

Convention: ``[B, T]`` tensors whose column ``t`` holds
``log p(token_t | prompt, tokens_<t)`` of the t-th response token (already
shifted); ``mask`` is bool, True on eligible response tokens. Oracle,
reference and policy score identical token ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsteer.algorithms.dpo import upcast

__all__ = ["select_tokens", "sepo_loss", "sequence_reward", "token_rewards", "trainer_loss"]


def _check_pair(values: Tensor, mask: Tensor, vname: str, mname: str) -> None:
    if values.dim() != 2:
        raise ValueError(f"{vname} must be [B, T], got shape {tuple(values.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{mname} must be a bool tensor, got {mask.dtype}")
    if mask.shape != values.shape:
        raise ValueError(f"{mname} has shape {tuple(mask.shape)}, expected {tuple(values.shape)}")


def token_rewards(oracle_token_logps: Tensor, ref_token_logps: Tensor, mask: Tensor) -> Tensor:
    """Per-token reward ``r_t = log π_o(y_t|·) - log π_ref(y_t|·)`` (docs/concepts/sepo.md §2).

    No β: a positive scale would not change the ranking that selection uses.

    Args:
        oracle_token_logps: DPO-trained oracle token log-probs, ``[B, T]``.
        ref_token_logps: The oracle's reference (SFT) token log-probs, ``[B, T]``.
        mask: Bool ``[B, T]``, True on eligible response tokens.

    Returns:
        ``[B, T]`` float32, detached, ``0.0`` where ``~mask`` (padding there
        may be anything, even ``-inf``).

    Raises:
        ValueError: Shapes disagree, or ``mask`` is not bool.
    """
    _check_pair(oracle_token_logps, mask, "oracle_token_logps", "mask")
    if ref_token_logps.shape != oracle_token_logps.shape:
        raise ValueError(f"ref_token_logps has shape {tuple(ref_token_logps.shape)}, "
                         f"expected {tuple(oracle_token_logps.shape)}")
    diff = oracle_token_logps.detach().float() - ref_token_logps.detach().float()
    return torch.where(mask, diff, torch.zeros((), dtype=torch.float32, device=diff.device))


def sequence_reward(token_rewards: Tensor, mask: Tensor) -> Tensor:
    """Sequence reward ``Σ_{t∈mask} r_t`` (docs/concepts/sepo.md §1: online ``oracle`` pair labelling).

    Args:
        token_rewards: ``[B, T]``, e.g. from :func:`token_rewards`.
        mask: Bool ``[B, T]``.

    Returns:
        ``[B]`` in at least float32.

    Raises:
        ValueError: Shapes disagree, or ``mask`` is not bool.
    """
    _check_pair(token_rewards, mask, "token_rewards", "mask")
    r = upcast(token_rewards)
    return torch.where(mask, r, torch.zeros((), dtype=r.dtype, device=r.device)).sum(-1)


def select_tokens(token_rewards: Tensor, mask: Tensor, *, fraction: float = 0.3, largest: bool) -> Tensor:
    """Selects the top (chosen) or bottom (rejected) reward tokens per row (docs/concepts/sepo.md §2–§3).

    Per row: ``n = mask.sum()``, ``k = 0`` if ``n == 0`` else
    ``max(1, int(fraction * n))`` (float64 product, truncated, as in the
    official code; the minimum of 1 is ours and avoids the official 0/0 NaN).
    The ``k`` eligible positions with the largest (``largest=True``) or
    smallest reward are picked; ties go to the lower index, which matches the
    official repeated argmax/argmin.

    Args:
        token_rewards: ``[B, T]`` rewards (values outside ``mask`` are ignored).
        mask: Bool ``[B, T]``, True on eligible tokens.
        fraction: Share of eligible tokens to keep, in ``(0, 1]``.
        largest: True for the chosen response, False for the rejected one.

    Returns:
        Bool ``[B, T]``, a subset of ``mask`` with ``k`` True entries per row.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1]``, shapes disagree, or
            ``mask`` is not bool.
    """
    if not 0.0 < fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    _check_pair(token_rewards, mask, "token_rewards", "mask")
    n = mask.sum(-1)
    # float64 multiply then floor == Python int(float(fraction) * n) for n >= 0.
    k = torch.floor(n.to(torch.float64) * float(fraction)).to(torch.long)
    k = torch.where(n > 0, k.clamp_min(1), torch.zeros_like(k))

    key = token_rewards.detach().to(torch.float64)
    # + 0.0 turns -0.0 into +0.0: radix sorts (CUDA) would order them apart.
    key = (-key if largest else key) + 0.0
    # Two stable sorts (LSD): by key, then eligible-first. Ineligible slots come
    # last whatever their value, and equal keys keep index order (ties -> lower index).
    order = torch.sort(key, dim=-1, stable=True).indices
    order = order.gather(-1, torch.sort((~mask).gather(-1, order).to(torch.int8), dim=-1, stable=True).indices)
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return (rank < k[:, None]) & mask


def _selected_mean(logps: Tensor, selected: Tensor, name: str) -> Tensor:
    counts = selected.sum(-1)
    if bool((counts == 0).any()):
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"{name} has empty selections in rows {rows}")
    # masked_fill (not multiply) so -inf/NaN padding outside the selection cannot leak.
    total = upcast(logps).masked_fill(~selected, 0.0).sum(-1)
    return total / counts.to(total.dtype)


def sepo_loss(
    policy_token_logps_chosen: Tensor,
    mask_chosen_selected: Tensor,
    policy_token_logps_rejected: Tensor,
    mask_rejected_selected: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 0.0,
) -> Tensor:
    """Reference-free SePO loss on the selected tokens (docs/concepts/sepo.md §2–§3).

    ``m = Σ_{t∈S} log π_θ(y_t) / |S|`` per response and
    ``L = mean_b softplus(-(β (m_c - m_r) - γ))``. The defaults β=1, γ=0
    reproduce the released code, which ignores its ``--beta`` and has no margin.

    Args:
        policy_token_logps_chosen: Policy token log-probs, chosen, ``[B, Tc]``.
        mask_chosen_selected: Bool ``[B, Tc]``, e.g. ``select_tokens(..., largest=True)``.
        policy_token_logps_rejected: Policy token log-probs, rejected, ``[B, Tr]``.
        mask_rejected_selected: Bool ``[B, Tr]``, e.g. ``select_tokens(..., largest=False)``.
        beta: Scale of the mean-log-prob margin, ``> 0``.
        gamma: Target margin γ.

    Returns:
        Scalar loss in at least float32; gradients flow only through the
        policy log-probs.

    Raises:
        ValueError: Shapes disagree, non-bool masks, ``B = 0``, ``beta <= 0``,
            or a row with an empty selection.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    _check_pair(policy_token_logps_chosen, mask_chosen_selected,
                "policy_token_logps_chosen", "mask_chosen_selected")
    _check_pair(policy_token_logps_rejected, mask_rejected_selected,
                "policy_token_logps_rejected", "mask_rejected_selected")
    b = policy_token_logps_chosen.shape[0]
    if policy_token_logps_rejected.shape[0] != b:
        raise ValueError(f"batch sizes differ: chosen {b}, rejected {policy_token_logps_rejected.shape[0]}")
    if b == 0:
        raise ValueError("empty batch (B = 0)")
    m_c = _selected_mean(policy_token_logps_chosen, mask_chosen_selected, "mask_chosen_selected")
    m_r = _selected_mean(policy_token_logps_rejected, mask_rejected_selected, "mask_rejected_selected")
    return F.softplus(-(beta * (m_c - m_r) - gamma)).mean()


def trainer_loss(policy: dict, reference: dict, lengths: dict, *, beta: float, gamma: float):
    """The trainer's loss for algo=sepo (algorithms.registry). The trainer sums log-probs over the selected tokens only
    (the items' masks), so policy / lengths is the spec's per-response mean m."""
    m_c, m_r = policy["chosen"] / lengths["chosen"], policy["rejected"] / lengths["rejected"]
    every = torch.ones(m_c.shape[0], 1, dtype=torch.bool, device=m_c.device)
    value = sepo_loss(m_c[:, None], every, m_r[:, None], every, beta=beta, gamma=gamma)
    margin = (m_c - m_r).detach()
    return value, {"loss": value.item(), "rewards/chosen": m_c.detach().mean().item(),
                   "rewards/rejected": m_r.detach().mean().item(), "rewards/margins": margin.mean().item(),
                   "rewards/accuracies": (margin > 0).float().mean().item()}

"""Plain sigmoid DPO loss shared by the Self-Contrast and SIPO losses.

Specs: ``shared/spec/self_contrast.md`` §2 (TRL sigmoid DPO) and
``shared/spec/sipo.md`` §2 (re-alignment DPO term). Pure torch, no reduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dpo_sigmoid_loss", "upcast"]


def upcast(t: Tensor) -> Tensor:
    """Returns ``t`` as float32, or unchanged if already float32/float64.

    bf16/fp16 sums of hundreds of token log-probs lose the small differences
    that DPO margins are made of, so every loss works in at least float32.
    """
    if t.dtype in (torch.float32, torch.float64):
        return t
    return t.to(torch.float32)


def dpo_sigmoid_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
) -> Tensor:
    """Per-pair sigmoid DPO loss ``softplus(-beta * h)``, no reduction.

    ``h = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)``;
    ``softplus(-x) = -log σ(x)`` but stays finite for large ``|x|``.

    Args:
        pi_chosen: Policy summed log-probs of the preferred responses. Any
            shape broadcastable with the others, e.g. ``[B]`` or ``[B, 1]``.
        pi_rejected: Policy summed log-probs of the dispreferred responses,
            e.g. ``[B]`` or ``[B, k]``.
        ref_chosen: Reference log-probs matching ``pi_chosen``; detached here,
            so no gradient reaches the reference.
        ref_rejected: Reference log-probs matching ``pi_rejected``; detached.
        beta: Inverse temperature, ``> 0``.

    Returns:
        Loss per pair, the broadcast shape of the inputs, in at least float32.

    Raises:
        ValueError: ``beta <= 0`` (or NaN), or shapes that do not broadcast.
    """
    if not beta > 0:  # also rejects NaN
        raise ValueError(f"beta must be > 0, got {beta!r}")
    try:
        torch.broadcast_shapes(pi_chosen.shape, pi_rejected.shape, ref_chosen.shape, ref_rejected.shape)
    except RuntimeError as err:
        raise ValueError(f"DPO inputs do not broadcast: {err}") from None
    chosen = upcast(pi_chosen) - upcast(ref_chosen.detach())
    rejected = upcast(pi_rejected) - upcast(ref_rejected.detach())
    return F.softplus(-beta * (chosen - rejected))

"""Plain sigmoid DPO: the per-pair loss shared by Self-Contrast and SIPO, and `dpo_loss` for the trainer.

Specs: ``docs/concepts/self-contrast.md`` §2 (TRL sigmoid DPO) and
``docs/concepts/sipo.md`` §2 (re-alignment DPO term), ``docs/concepts/sso.md`` §4 (the recipe's
phase-5 DPO). Pure torch; only `dpo_loss` reduces (batch mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dpo_loss", "dpo_sigmoid_loss", "upcast"]


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


def dpo_loss(policy: dict[str, Tensor], reference: dict[str, Tensor], lengths: dict[str, Tensor], *,
             beta: float = 0.1) -> tuple[Tensor, dict[str, float]]:
    """Plain sigmoid DPO on (chosen, rejected) pairs, in the trainer's loss-registry signature.

    The recipe's phase 5 (``docs/concepts/sso.md`` §4): DPO with ``beta`` 0.1 of the original
    policy on the SSO generator's pairs, both scored under the bare prompt.

    Args:
        policy: ``"chosen"``, ``"rejected"`` -> ``[B]`` summed response log-probs (with grad).
        reference: the same keys from the frozen reference; detached here.
        lengths: token counts per key; unused (DPO works on sums), accepted for the signature.
        beta: inverse temperature, ``> 0``.

    Returns:
        The batch-mean loss and metrics: ``loss``, ``rewards/{chosen,rejected,accuracies,margins}``,
        ``logps/{chosen,rejected}`` (mean policy sums).

    Raises:
        KeyError: ``policy`` or ``reference`` lacks ``"chosen"`` or ``"rejected"``.
        ValueError: ``beta <= 0``, or the tensors are not 1-D ``[B]`` of one shape.
    """
    from selfsteer.algorithms.sso import pair_rewards

    for name, scores in (("policy", policy), ("reference", reference)):
        for key in ("chosen", "rejected"):
            if key not in scores:
                raise KeyError(f"dpo_loss: {name} has no {key!r} scores (keys: {sorted(scores)})")
    tensors = [policy["chosen"], policy["rejected"], reference["chosen"], reference["rejected"]]
    if any(t.dim() != 1 or t.shape != tensors[0].shape for t in tensors):
        raise ValueError(f"dpo_loss: every score must be 1-D [B] of one shape, got {[tuple(t.shape) for t in tensors]}")
    per_pair = dpo_sigmoid_loss(*tensors, beta=beta)  # [B]
    loss = per_pair.mean()
    metrics = {"loss": loss.item(), **pair_rewards(*(t.detach() for t in tensors), beta=beta)}
    metrics.update({"logps/chosen": upcast(policy["chosen"].detach()).mean().item(),
                    "logps/rejected": upcast(policy["rejected"].detach()).mean().item()})
    return loss, metrics

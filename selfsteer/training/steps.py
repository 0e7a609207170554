"""How many items a training call takes and how many optimizer steps it makes (pure arithmetic).

The trainer ranks step together (each optimizer step is a collective), so a call gives every rank
the same number of items; the lr schedule is sized from the same step count the ranks take.
"""

from __future__ import annotations

import math


def equal_shards(n_items: int, world: int) -> int:
    """How many of `n_items` a call trains on: the largest multiple of the `world` ranks (the rest wait)."""
    return n_items - n_items % world


def optimizer_steps(per_rank: int, tc) -> int:
    """Optimizer steps of one epoch over `per_rank` items on one rank: micro-batches of
    `tc.micro_batch_size`, `tc.grad_accum` of them per step, a short last group stepping too."""
    return math.ceil(math.ceil(per_rank / tc.micro_batch_size) / tc.grad_accum)


def state_due(round_index: int, every: int, rounds: int) -> bool:
    """Whether round `round_index` is an `every`-th round or the last: the rounds that write the
    resumable trainer state (save_state_every), an HF checkpoint (save_every) or a gold eval (eval.every)."""
    return round_index % every == 0 or round_index >= rounds

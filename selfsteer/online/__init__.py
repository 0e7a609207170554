"""Online rounds, one module per method, on the same actors (the methods: docs/concepts/).

Each method's round is an object that owns its state and its own actors: built once with
`(cfg, roles, inputs)`, `run(r) -> metrics` per round, `close()` before the roles shut down. Which
class runs which `algo` is the method's spec (selfsteer.algorithms.registry).
"""

from __future__ import annotations

from typing import Protocol

from selfsteer.algorithms.registry import method


class Round(Protocol):
    def run(self, r: int) -> dict[str, float]:
        """Run round `r` (checkpointed before it returns); the round's metrics."""

    def close(self) -> None:
        """Stop what the round started itself (its actors are killed with the roles)."""


def start_round(cfg, roles, inputs) -> Round:
    """The round of `cfg.algo`, its own actors and state started."""
    return method(cfg.algo).round_class()(cfg, roles, inputs)

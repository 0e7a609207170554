"""One-step-off pipelining (`async_rounds: true`): the next round samples while this one trains.

SSO's round (`online.sso`) stays a plain sequence; this helper owns the one background sampling
call and the version of the weights the engines hold, so each round's pairs can be stamped with their
staleness (rounds of training the sampling weights lag behind the weights being trained).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class Sampled:
    """A round's sampling output with its reference scores, produced in the foreground or ahead of time."""

    prompts: list
    pairs: list
    triples: list
    drops: dict
    signal: dict
    principle_stats: dict
    skipped_long: int
    policy_round: int  # the last round whose training the sampling weights include (0: start weights)
    seconds: dict = field(default_factory=dict)  # time/principles, time/generation, time/reference
    keys: list = field(default_factory=list)  # the (response, context) rows the loss reads
    items: list = field(default_factory=list)  # per kept triple: key -> context, response, reference log-prob
    kept: list = field(default_factory=list)  # per triple: passed pairs.filter (all True without one)

    def staleness(self, round_index: int) -> int:
        """Rounds the sampling weights lag the weights trained in `round_index` (0: on-policy)."""
        return round_index - 1 - self.policy_round


class OneStepOff:
    """At most one sampling call in flight, for the round after the one being trained.

    `policy_round` is the round whose weights the engines hold; the round moves it after each
    sync. `wait()` must come before a sync: engines change weights only when idle.
    """

    def __init__(self, enabled: bool, policy_round: int = 0):
        self.enabled = enabled
        self.policy_round = policy_round
        self._executor: Optional[ThreadPoolExecutor] = ThreadPoolExecutor(1, "sample-ahead") if enabled else None
        self._round: Optional[int] = None
        self._future: Optional[Future] = None

    def submit(self, round_index: int, sample: Callable[..., Sampled], *args: Any) -> None:
        """Start sampling `round_index` in the background (a no-op when not enabled)."""
        if not self.enabled:
            return
        if self._future is not None:
            raise RuntimeError(f"round {self._round} is still being sampled ahead; take or wait for it first")
        self._round, self._future = round_index, self._executor.submit(sample, *args)

    def wait(self) -> float:
        """Block until the background call is done (re-raising its error); returns seconds waited."""
        start = time.perf_counter()
        if self._future is not None:
            self._future.exception()
        return time.perf_counter() - start

    def take(self, round_index: int) -> Optional[Sampled]:
        """The ahead-sampled round `round_index`, or None if none was started for it."""
        if self._future is None or self._round != round_index:
            return None
        future, self._future, self._round = self._future, None, None
        return future.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

"""Waiting for a Ray actor that is being restarted (stateless roles come back by themselves)."""

from __future__ import annotations

import time
from typing import Optional

import ray


def wait_until_alive(actor, name: str, timeout_s: Optional[float]) -> None:
    """Block until `actor.ready()` answers; raise TimeoutError naming `name` past the bound.

    While Ray restarts an actor its calls fail fast with ActorUnavailableError, so poll.
    """
    from ray.exceptions import ActorUnavailableError, GetTimeoutError

    deadline = time.monotonic() + (timeout_s or 600)
    while True:
        try:
            ray.get(actor.ready.remote(), timeout=max(deadline - time.monotonic(), 0.1))
            return
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not come back from a restart within {timeout_s} s") from None
            time.sleep(0.5)
        except GetTimeoutError as err:
            raise TimeoutError(f"{name} did not come back from a restart within {timeout_s} s") from err

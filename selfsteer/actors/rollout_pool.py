"""RolloutPool: the driver's owner of the engine actors, and the fault-handled fan-out of requests.

The pool owns the engines' lifecycles, so the driver can grow or shrink it between rounds; every
generation call (the round's samples, the principle writer's) goes through generate_on_engines,
which re-issues a dead or stale engine's shard after a re-sync.
"""

from __future__ import annotations

import logging
from typing import Optional

import ray

from selfsteer.actors.liveness import wait_until_alive
from selfsteer.actors.rollout import RolloutEngine, StaleWeightsError
from selfsteer.engines.base import ChatRequest, Generation, Sampling
from selfsteer.utils.runtime import actor_env

logger = logging.getLogger(__name__)


class EngineTimeoutError(TimeoutError):
    """A rollout engine did not answer within the configured bound."""


def generate_on_engines(engines: list, requests: list[ChatRequest], sampling: Sampling,
                        timeout_s: Optional[float] = None, on_engine_restart=None, max_restarts: int = 0,
                        progress=None, expected_version=None, stats: Optional[dict] = None) -> list[Generation]:
    """Shard requests contiguously over engines; results come back in request order.

    A shard whose engine died, or came back from a restart with stale weights, is re-issued
    to the same engine after `on_engine_restart()` has brought it back to the current weights;
    `expected_version` (a callable) names the weights version every engine must hold.
    """
    import time

    from ray.exceptions import RayActorError, RayTaskError

    if not engines:
        raise RuntimeError("no rollout engines are running")
    per = -(-len(requests) // len(engines))
    shards = [requests[i:i + per] for i in range(0, len(requests), per)]
    results: list = [None] * len(shards)
    version = (lambda: None) if expected_version is None else expected_version

    def submit(i):
        return engines[i].generate.remote(shards[i], _shard_seed(sampling, i), version())

    pending = {submit(i): i for i in range(len(shards))}
    restarts = 0
    deadline = time.monotonic() + timeout_s if timeout_s else None
    while pending:
        wait = None if deadline is None else max(deadline - time.monotonic(), 0)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
        if not ready:
            late = sorted(pending.values())
            raise EngineTimeoutError(f"rollout engine(s) {late} did not answer within {timeout_s:.0f} s "
                                     "(ray.call_timeout_s); the round's earlier outputs are on disk")
        ref = ready[0]
        i = pending.pop(ref)
        try:
            results[i] = ray.get(ref)
        except (RayActorError, RayTaskError) as exc:
            if isinstance(exc, RayTaskError) and not isinstance(exc.as_instanceof_cause(), StaleWeightsError):
                raise
            restarts += 1
            if restarts > max_restarts or on_engine_restart is None:
                raise RuntimeError(f"rollout engine {i} died and restarts are exhausted ({max_restarts}): {exc}") from exc
            logger.warning("rollout engine %d was restarted (%s); re-syncing and re-issuing its %d requests",
                           i, type(exc).__name__, len(shards[i]))
            wait_until_alive(engines[i], f"rollout engine {i}", timeout_s)
            on_engine_restart()
            pending[submit(i)] = i
            continue
        if progress is not None:
            progress(len(shards[i]))
    if stats is not None:
        stats["engine_restarts"] = stats.get("engine_restarts", 0) + restarts
    return [g for chunk in results for g in chunk]


def _shard_seed(sampling: Sampling, shard: int) -> Sampling:
    if sampling.seed is None:
        return sampling
    from dataclasses import replace

    return replace(sampling, seed=sampling.seed * 1009 + shard)


RELEASE_WAIT_S = 5  # an engine's own child-process cleanup before ray.kill (shrink, shutdown)


class RolloutPool:
    """Driver-side owner of the engine actors: start, resize, generate, shut down."""

    def __init__(self, model_path: str, cfg, *, torch_threads: int = 1, env: Optional[dict] = None, shared=None):
        self.model_path, self.cfg, self.torch_threads = model_path, cfg, torch_threads
        self.shared = shared  # colocated GPU layout: (placement group, slots by label); engine i on GPU i
        self.env = env or {}
        self.engines: list = []
        self._pgs: list = []
        self.stats: dict[str, int] = {}  # cumulative counters (engine_restarts)

    def _start_one(self, index: int):
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        rc = self.cfg.rollout
        if self.shared is not None:  # colocated: a share of trainer rank `index`'s GPU bundle
            from selfsteer.plan.colocation import actor_options

            slot = self.shared[1].get(f"rollout engine {index}")
            if slot is None:
                raise ValueError(f"placement=colocated has a GPU bundle for rollout.num_engines={rc.num_engines} "
                                 f"engines; engine {index} has none (the pool cannot grow past the trainer's GPUs)")
            pg, where = None, actor_options(slot, self.shared[0])
        else:
            # One bundle per engine, tensor-parallel GPUs strictly packed on one node.
            bundle = {"CPU": rc.num_cpus, **({"GPU": rc.num_gpus * rc.tensor_parallel_size} if rc.num_gpus else {})}
            pg = placement_group([bundle], strategy="STRICT_PACK")
            ray.get(pg.ready(), timeout=self.cfg.ray.startup_timeout_s)
            where = dict(num_cpus=rc.num_cpus, num_gpus=rc.num_gpus * rc.tensor_parallel_size,
                         scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0))
        actor = ray.remote(RolloutEngine).options(
            **where,
            runtime_env={"env_vars": actor_env(self.torch_threads, self.env)},
            max_restarts=self.cfg.ray.max_restarts, max_task_retries=0,  # we re-issue after a re-sync ourselves
        ).remote(self.model_path, rc, self.cfg.model, torch_threads=self.torch_threads, index=index,
                  colocated=self.cfg.placement == "colocated")
        return actor, pg

    def resize(self, num_engines: int) -> list:
        """Grow or shrink to `num_engines`; returns the newly started engines (they need weights)."""
        new = []
        while len(self.engines) < num_engines:
            actor, pg = self._start_one(len(self.engines))
            self.engines.append(actor)
            self._pgs.append(pg)
            new.append(actor)
        gone = [(len(self.engines) - 1, self.engines.pop(), self._pgs.pop()) for _ in range(len(self.engines) - num_engines)]
        if gone:  # their vLLM children first (ray.kill would leave them holding the GPU), all at once and
            # briefly: a stalled engine cannot answer, and shutting down must not wait on it.
            calls = {engine.release.remote(): index for index, engine, _ in gone}
            _, pending = ray.wait(list(calls), num_returns=len(calls), timeout=RELEASE_WAIT_S)
            for ref in pending:
                logger.warning("rollout engine %d: did not release its child processes within %d s; killing it "
                               "(children of a vLLM engine may keep their GPU until the job ends)",
                               calls[ref], RELEASE_WAIT_S)
            for _, engine, pg in gone:
                ray.kill(engine)
                if pg is not None:
                    ray.util.remove_placement_group(pg)
        if new:
            ray.get([a.ready.remote() for a in new], timeout=self.cfg.ray.startup_timeout_s)
            logger.info("rollout pool: %d engine(s) running", len(self.engines))
        return new

    def generate(self, requests: list[ChatRequest], sampling: Sampling, on_engine_restart=None,
                 expected_version=None) -> list[Generation]:
        from tqdm.auto import tqdm

        # delay: a bar only for calls that take a while (a short one would just leave lines in a log)
        with tqdm(total=len(requests), desc="generation", unit="req", leave=False, delay=3) as bar:
            return generate_on_engines(self.engines, requests, sampling, timeout_s=self.cfg.ray.call_timeout_s,
                                       on_engine_restart=on_engine_restart, max_restarts=self.cfg.ray.max_restarts,
                                       progress=bar.update, expected_version=expected_version, stats=self.stats)

    def shutdown(self) -> None:
        self.resize(0)

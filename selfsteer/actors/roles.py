"""The run's Ray roles: starting them (`start_roles`) and the `Roles` handle the driver and the
method rounds call them through. The inputs live in `actors.inputs`, Ray's start in `actors.ray_start`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import ray

from selfsteer.actors.inputs import Inputs
from selfsteer.actors.ray_start import init_ray
from selfsteer.config.schema import RunConfig
from selfsteer.utils.runtime import actor_env

logger = logging.getLogger(__name__)


def schedule_steps(cfg: RunConfig, bounds: Optional[list] = None) -> list[int]:
    """Optimizer steps per lr-schedule segment, from its segment ends in rounds."""
    starts = [0, *(bounds or [cfg.rounds])]
    return [(end - start) * steps_per_round(cfg) for start, end in zip(starts, starts[1:])]


def steps_per_round(cfg: RunConfig) -> int:
    """Optimizer steps a round takes when every prompt gives one example (the lr schedule's unit)."""
    from selfsteer.training.steps import optimizer_steps

    tc = cfg.trainer
    return optimizer_steps(max(cfg.data.prompts_per_round // tc.num_ranks, 1), tc) * tc.epochs_per_round


@dataclass
class Roles:
    cfg: RunConfig
    pool: Any
    principle_actor: Any
    references: list  # reference.num_actors ReferenceModel actors
    trainer: Any
    syncer: Any
    restarts: dict = field(default_factory=dict)  # role -> calls re-issued after an actor restart
    extra_actors: list = field(default_factory=list)  # an algorithm's own roles (e.g. the embedder)
    reference_refreshed: bool = False  # holds policy weights: a restarted reference must get them again
    shared_pg: Any = None  # placement=colocated on GPU: the placement group every role shares
    marker: dict = field(default_factory=dict)  # the storage marker's env: every role reads it back first

    @property
    def reference(self):
        """The first reference actor (the only one unless reference.num_actors > 1)."""
        return self.references[0]

    def principles(self, prompts, round_index: int):
        """A (good, bad) principle pair per prompt and the round's counts.

        principles.llm.source=policy: the policy writes them on the rollout engines through `generate`,
        the same fault-handled call as the responses; other sources ask the principle actor.
        """
        pc = self.cfg.principles
        if pc.mode == "llm" and pc.llm.source == "policy":
            from selfsteer.actors.principle import write_principles

            return write_principles(pc, self.cfg.seed, prompts, round_index, self._complete_on_engines)
        return self.call("principle generator", self.principle_actor,
                         lambda: self.principle_actor.generate.remote(prompts, round_index))

    def _complete_on_engines(self, texts: list[str], sampling) -> list[str]:
        from selfsteer.engines.base import ChatRequest

        return [g.text for g in self.generate([ChatRequest(prompt=t) for t in texts], sampling)]

    def spawn(self, cls, *args, resources: dict, env: Optional[dict] = None, **kwargs):
        """A method's own long-lived actor (`spawn_actor`), killed with the run's roles."""
        actor = spawn_actor(self.cfg, self.marker, cls, *args, resources=resources, env=env, **kwargs)
        self.extra_actors.append(actor)
        return actor

    def reference_scores(self, contexts, responses) -> tuple[list[float], list[float]]:
        """Summed log-probs and token counts per row, from every reference actor at once (or, with
        reference.mode=trainer / adapter_off, from the trainer ranks: their frozen start model, or the
        policy with the adapter switched off)."""
        if self.cfg.reference.mode != "actor":
            return self.trainer.reference_scores(contexts, responses)
        parts = self._reference_calls("score", contexts, responses)
        return self._in_order(len(contexts), [(rows, sums) for rows, (sums, _) in parts]), \
            self._in_order(len(contexts), [(rows, counts) for rows, (_, counts) in parts])

    def reference_token_scores(self, contexts, responses) -> list[list[float]]:
        """Per-token log-probs per row (SePO), from every reference actor at once (or the trainer ranks)."""
        if self.cfg.reference.mode != "actor":
            return self.trainer.reference_scores(contexts, responses, per_token=True)[0]
        return self._in_order(len(contexts), self._reference_calls("token_scores", contexts, responses))

    def _reference_calls(self, method: str, contexts, responses) -> list[tuple[list[int], Any]]:
        from selfsteer.actors.reference import shard_rows

        shards = [rows for rows in shard_rows(contexts, responses, len(self.references)) if rows]
        calls = []
        for actor, rows in zip(self.references, shards):
            ctx, resp = [contexts[i] for i in rows], [responses[i] for i in rows]
            submit = lambda a=actor, c=ctx, r=resp: getattr(a, method).remote(c, r)  # noqa: E731
            calls.append((actor, submit, submit()))  # all submitted before any is awaited
        return [(rows, self.call("reference model", actor, submit, first=ref))
                for rows, (actor, submit, ref) in zip(shards, calls)]

    @staticmethod
    def _in_order(n: int, parts) -> list:
        out = [None] * n
        for rows, values in parts:
            for i, v in zip(rows, values):
                out[i] = v
        return out

    def refresh_reference(self, actors=None, verify=None) -> None:
        """Every reference actor (or `actors`) takes the policy's current weights (reference.refresh_every)."""
        self.syncer.copy_into(list(actors or self.references), "reference model", verify=verify)
        self.reference_refreshed = True

    def generate(self, requests, sampling):
        """Sample on the pool; a dead engine is restarted, brought to the current weights, re-asked."""
        if not self.cfg.rollout.update_weights:  # offline: a restarted engine reloads the start weights
            return self.pool.generate(requests, sampling, on_engine_restart=lambda: None)
        return self.pool.generate(requests, sampling, on_engine_restart=lambda: self.syncer.resync(self.pool.engines),
                                  expected_version=lambda: self.syncer.version)

    def sleep_engines(self) -> dict[str, float]:
        """placement=colocated: the engines free their weights (and KV cache) before the trainer
        trains on the same devices; the sync after training wakes them. Returns the RSS freed."""
        if self.cfg.placement != "colocated" or not self.pool.engines:
            return {}
        slept = ray.get([e.sleep.remote() for e in self.pool.engines], timeout=self.cfg.ray.call_timeout_s)
        return {"rollout/sleep_rss_freed_mb": sum(x["rss_freed_mb"] for x in slept) / len(slept),
                "rollout/sleep_supported": min(x["supported"] for x in slept)}

    def call(self, role: str, actor, submit, first=None):
        """One remote call on a stateless role, bounded in time, re-issued if Ray restarted the actor.

        `submit()` issues the call and returns its ref; the actor must have been started with
        `spawn_actor` (or `spawn`), which gives it `ray.max_restarts`.

        `first`: the call's result ref when already submitted (several actors working at once).
        """
        from ray.exceptions import GetTimeoutError, RayActorError

        from selfsteer.actors.liveness import wait_until_alive

        timeout = self.cfg.ray.call_timeout_s
        for attempt in range(self.cfg.ray.max_restarts + 1):
            try:
                ref, first = first if first is not None else submit(), None
                return ray.get(ref, timeout=timeout)
            except GetTimeoutError as exc:
                raise TimeoutError(f"{role} did not answer within ray.call_timeout_s={timeout} s") from exc
            except RayActorError as exc:
                if attempt == self.cfg.ray.max_restarts:
                    raise RuntimeError(f"{role} died {attempt + 1} time(s); giving up: {exc}") from exc
                logger.warning("%s died (%s); re-issuing the call to its restarted actor", role, type(exc).__name__)
                key = role.replace(" ", "_") + "_restarts"
                self.restarts[key] = self.restarts.get(key, 0) + 1
                wait_until_alive(actor, role, timeout)
                if any(actor is a for a in self.references) and self.reference_refreshed:
                    # It restarted on the start weights (exact for refresh_every=1); checked unless sync.verify=never.
                    self.refresh_reference([actor], verify=self.cfg.sync.verify != "never")

    def resize_engines(self, num_engines: int) -> None:
        """Grow or shrink the rollout pool; new engines get the trainer's current weights first."""
        if num_engines == len(self.pool.engines):
            return
        if num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {num_engines}")
        self.pool.resize(num_engines)
        if self.cfg.rollout.update_weights:  # offline runs keep the start weights every engine loaded
            self.syncer.sync(self.pool.engines)
        logger.info("rollout pool resized to %d engine(s)", num_engines)

    def shutdown(self) -> None:
        self.pool.shutdown()
        self.trainer.shutdown()
        self.syncer.close()
        for actor in (self.principle_actor, *self.references, *self.extra_actors):
            ray.kill(actor)
        if self.shared_pg is not None:
            ray.util.remove_placement_group(self.shared_pg)


def start_roles(cfg: RunConfig, inputs: Inputs) -> Roles:
    from selfsteer.actors.principle import PrincipleGenerator
    from selfsteer.actors.reference import ReferenceModel
    from selfsteer.actors.rollout_pool import RolloutPool
    from selfsteer.actors.trainer_group import TrainerGroup
    from selfsteer.actors.syncer import WeightSyncer

    init_ray(cfg)
    # Before any actor: a config the cluster cannot place fails now, not after ray.startup_timeout_s.
    from selfsteer.plan.planner import check_cluster, nodes_from_ray

    check_cluster(cfg, nodes_from_ray(ray.nodes()))
    from selfsteer.utils.storage import write_marker

    marker = write_marker(Path(cfg.output_dir))  # every role reads it back first: shared storage
    threads = cfg.ray.torch_threads
    shared = colocated_group(cfg)
    trainer = TrainerGroup(cfg, inputs.policy_path, schedule_steps(cfg, inputs.schedule), env=marker, shared=shared,
                           reference_path=inputs.reference_path)
    pool = RolloutPool(inputs.policy_path, cfg, torch_threads=threads, env=marker, shared=shared)
    pool.resize(cfg.rollout.num_engines)
    rc = cfg.reference
    if shared is not None:
        from selfsteer.plan.colocation import actor_options

        where = actor_options(shared[1]["reference"], shared[0])
    else:
        where = dict(num_cpus=rc.num_cpus, num_gpus=rc.num_gpus)
    references = [spawn_actor(cfg, marker, ReferenceModel, inputs.reference_path, rc, cfg.model, resources=where,
                              torch_threads=threads)
                  for _ in range(rc.num_actors if rc.mode == "actor" else 0)]  # otherwise the trainer ranks score
    principle_actor = spawn_actor(cfg, marker, PrincipleGenerator, cfg.principles, cfg.seed, cfg.model,
                                  resources=cfg.principles.llm.actor_resources(cfg.principles.mode),
                                  torch_threads=threads)
    ray.get([*(r.ready.remote() for r in references), principle_actor.ready.remote()],
            timeout=cfg.ray.startup_timeout_s)
    syncer = WeightSyncer(trainer, cfg)
    return Roles(cfg, pool, principle_actor, references, trainer, syncer, shared_pg=shared and shared[0], marker=marker)


def spawn_actor(cfg: RunConfig, marker: Optional[dict], cls, *args, resources: dict, env: Optional[dict] = None,
                **kwargs):
    """One long-lived role actor, started the same way for every role (the run's and the recipe's).

    Ray restarts it up to `ray.max_restarts` times and `Roles.call` re-issues the call (Ray's own
    task retries stay off: a call is re-issued once, by us); it gets the storage marker every role
    reads back first (None: the recipe, which writes no run directory, has none), the shared thread
    and quiet-library settings, and `env` on top.
    """
    return ray.remote(cls).options(
        **resources, runtime_env={"env_vars": actor_env(cfg.ray.torch_threads, {**(marker or {}), **(env or {})})},
        max_restarts=cfg.ray.max_restarts, max_task_retries=0,
    ).remote(*args, **kwargs)


def colocated_group(cfg: RunConfig):
    """placement=colocated on GPU: one placement group of whole-GPU bundles that every role shares
    (selfsteer.plan.colocation); returns (group, slots by label). None otherwise (CPU: no GPU to share)."""
    if cfg.placement != "colocated" or not cfg.trainer.num_gpus:
        return None
    from ray.util.placement_group import placement_group

    from selfsteer.plan.colocation import colocated_slots

    bundles, slots = colocated_slots(cfg)
    pg = placement_group(bundles, strategy="PACK")
    ray.get(pg.ready(), timeout=cfg.ray.startup_timeout_s)
    return pg, {s.label: s for s in slots}

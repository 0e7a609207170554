"""TrainerGroup: the driver's handle on `num_ranks` TrainerRank actors in one placement group.

Calls fan out to every rank; the first dead or stalled rank fails the call, named, with the
command that resumes the run.
"""

from __future__ import annotations

from typing import Optional

import ray

from selfsteer.actors.trainer import TrainerRank, TrainerRankError
from selfsteer.utils.runtime import actor_env


class TrainerGroup:
    """Driver-side handle: ranks packed into one placement group; calls fan out to every rank."""

    def __init__(self, cfg, model_path: str, total_steps: int | list[int], *, env: Optional[dict] = None, shared=None,
                 reference_path: Optional[str] = None):
        """`shared`: (placement group, slots by label) of the colocated GPU layout (selfsteer.plan.colocation);
        `reference_path`: the start model the ranks hold with reference.mode=trainer (default `model_path`)."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from selfsteer.plan.colocation import actor_options

        tc = cfg.trainer
        self.cfg, self._owns_pg = cfg, shared is None
        if shared is None:
            bundle = {"CPU": tc.num_cpus, **({"GPU": tc.num_gpus} if tc.num_gpus else {})}
            self.pg = placement_group([bundle] * tc.num_ranks, strategy="PACK")
            ray.get(self.pg.ready(), timeout=cfg.ray.startup_timeout_s)
            where = [dict(num_cpus=tc.num_cpus, num_gpus=tc.num_gpus, scheduling_strategy=PlacementGroupSchedulingStrategy(
                self.pg, placement_group_bundle_index=i)) for i in range(tc.num_ranks)]
        else:
            self.pg = shared[0]
            where = [actor_options(shared[1][f"trainer rank {i}"], self.pg) for i in range(tc.num_ranks)]
        extra = dict(env or {})
        if tc.device == "cpu" or (tc.device == "auto" and not tc.num_gpus):
            extra["DS_ACCELERATOR"] = "cpu"
        # No max_restarts (unlike the rollout engines): a restarted rank could not rejoin its
        # torch.distributed process group, so a lost rank fails the round instead.
        self.ranks = [
            ray.remote(TrainerRank).options(
                **where[i],
                runtime_env={"env_vars": actor_env(cfg.ray.torch_threads, extra)},
            ).remote(i, tc.num_ranks, cfg, torch_threads=cfg.ray.torch_threads)
            for i in range(tc.num_ranks)
        ]
        host, port = ray.get(self.ranks[0].open_master_store.remote(), timeout=cfg.ray.startup_timeout_s)
        self.infos = self._all("setup", [r.setup.remote(host, port, model_path, total_steps, reference_path)
                                         for r in self.ranks],
                               timeout_s=cfg.ray.startup_timeout_s)
        self.rank0 = self.ranks[0]

    def train(self, items: list[dict], keys: list[str], loss_kwargs: dict, loss: Optional[str] = None) -> list[dict]:
        """Shard items evenly (every rank must take the same number of steps)."""
        world = len(self.ranks)
        shards = [items[r::world] for r in range(world)]
        return self._all("train", [rank.train.remote(shard, keys, loss_kwargs, loss)
                                   for rank, shard in zip(self.ranks, shards)])

    def save_hf(self, path: str) -> None:
        self._all("save_hf", [r.save_hf.remote(path) for r in self.ranks])

    def reference_scores(self, contexts: list[list[int]], responses: list[list[int]], per_token: bool = False):
        """reference.mode=trainer or adapter_off: the rows dealt out to the ranks
        (selfsteer.actors.reference.score_on_ranks)."""
        from selfsteer.actors.reference import score_on_ranks

        tc = self.cfg.trainer
        lockstep = tc.backend == "deepspeed" and tc.zero_stage == 3  # its forwards gather across ranks
        return score_on_ranks(lambda rank, c, r: rank.reference_scores.remote(c, r, per_token),
                              lambda refs: self._all("reference_scores", refs), self.ranks, contexts, responses,
                              lockstep)

    def _all(self, what: str, refs: list, timeout_s: Optional[float] = None) -> list:
        """Wait for every rank; the first dead or stalled rank fails the call, named."""
        import time

        from ray.exceptions import RayActorError

        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        timeout_s = timeout_s or self.cfg.ray.call_timeout_s
        pending, deadline = list(refs), time.monotonic() + timeout_s
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0))
            if not ready:
                late = sorted(rank_of[r] for r in pending)
                raise TrainerRankError(f"trainer rank(s) {late} did not finish {what} within {timeout_s} s")
            try:
                ray.get(ready[0])
            except RayActorError as exc:
                raise TrainerRankError(f"trainer rank {rank_of[ready[0]]} died during {what}; the run stops here. "
                                       f"Continue from the last finished round with: selfsteer run --resume "
                                       f"{self.cfg.output_dir}") from exc
        return ray.get(refs)

    def save_state(self, directory: str, tag: str) -> None:
        self._all("save_state", [r.save_state.remote(directory, tag) for r in self.ranks])

    def load_state(self, directory: str, tag: str) -> None:
        self._all("load_state", [r.load_state.remote(directory, tag) for r in self.ranks])

    def shutdown(self) -> None:
        try:  # unlink the weight segment now; ray.kill skips the rank's exit handlers
            ray.get(self.rank0.close_shm.remote(), timeout=30)
        except Exception:  # a dead rank 0: its segment went with the process's finalizers, or is in SHM_DIR
            pass
        for r in self.ranks:
            ray.kill(r)
        if self._owns_pg:
            ray.util.remove_placement_group(self.pg)

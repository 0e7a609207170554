"""What the recipe's phases share: the Ray roles they run on (`Workbench`) and the progress callback.

Its own module so `phases` (which runs `training` in `pipeline`) and `training` (which takes the
workbench) both import it and not each other.
"""

from __future__ import annotations

from typing import Callable, Optional

import ray

from selfsteer.config.schema import RunConfig

# (phase, done, total) after every chunk; the CLI draws progress bars from it.
Progress = Optional[Callable[[str, int, int], None]]


class Workbench:
    """The Ray roles the phases share, each started on first use (so bad input fails before Ray
    starts): one rollout pool (one model) at a time, and the principle generator. Trainer groups
    and the reference belong to `training`."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._pool = None
        self._pool_model: Optional[str] = None
        self._principle_actor = None

    def pool(self, model_path: str):
        """Rollout engines serving `model_path` (an engine pool on another model is stopped first)."""
        if self._pool is not None and self._pool_model == model_path:
            return self._pool
        from selfsteer.actors.rollout_pool import RolloutPool
        from selfsteer.actors.ray_start import init_ray

        init_ray(self.cfg)
        self.release_pool()
        self._pool = RolloutPool(model_path, self.cfg, torch_threads=self.cfg.ray.torch_threads)
        self._pool_model = model_path
        self._pool.resize(self.cfg.rollout.num_engines)
        return self._pool

    def principle_actor(self):
        if self._principle_actor is None:
            from selfsteer.actors.principle import PrincipleGenerator
            from selfsteer.actors.ray_start import init_ray
            from selfsteer.actors.roles import spawn_actor

            cfg = self.cfg
            init_ray(cfg)
            self._principle_actor = spawn_actor(
                cfg, None, PrincipleGenerator, cfg.principles, cfg.seed, cfg.model,
                resources=cfg.principles.llm.actor_resources(cfg.principles.mode), torch_threads=cfg.ray.torch_threads)
            ray.get(self._principle_actor.ready.remote(), timeout=cfg.ray.call_timeout_s)
        return self._principle_actor

    def release_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool, self._pool_model = None, None

    def release_principle_actor(self) -> None:
        if self._principle_actor is not None:
            ray.kill(self._principle_actor)
            self._principle_actor = None

    def shutdown(self) -> None:
        self.release_pool()
        self.release_principle_actor()

"""Starting Ray for a run: attach to a cluster, or an in-process Ray whose listeners all stay on loopback."""

from __future__ import annotations

import logging
import os

import ray

from selfsteer.config.schema import RunConfig


def init_ray(cfg: RunConfig) -> None:
    """Attach to a cluster (`ray.address`), or start Ray in-process with every listener on loopback.

    On Linux Ray resolves the node address `127.0.0.1` to the machine's address, and then its GCS,
    raylet, workers and agents listen on all interfaces; with Ray's single-machine mode (the one it
    uses on macOS) the node address stays 127.0.0.1 and each of them binds to it.
    """
    from selfsteer.sync.shm import remove_stale_segments

    remove_stale_segments()  # a colocated run killed by SIGKILL left its weights in /dev/shm (issue #26 item 13)
    if ray.is_initialized():
        return
    # Explicit, so an embedded run never writes an auth token into the user's home. (Ray reads the
    # mode when it is imported, so a per-run token set here would not reach this process.)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, logging_level=logging.WARNING)
        return
    import ray._private.ray_constants as ray_constants

    # Set for the start only: Ray's processes inherit it as they are spawned (workers get the
    # raylet's environment), and a later `ray start` from this process is not affected.
    saved = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    # Kept for the run: every actor (workers inherit it) binds its gloo groups to loopback, not
    # to the address the hostname resolves to (issue #26 item 12).
    from selfsteer.sync.collective import loopback_bind_env

    os.environ.update(loopback_bind_env())
    ray_constants.ENABLE_RAY_CLUSTER = False  # read when this process resolves the node address
    try:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                 _node_ip_address="127.0.0.1")
    finally:
        if saved[0] is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]
    from selfsteer.actors import reaper

    reaper.start()  # no Ray process outlives the driver, even after kill -9

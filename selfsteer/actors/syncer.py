"""WeightSyncer: the driver-side role that moves the trainer's weights into the rollout engines.

It plans the buckets once, (re)forms the broadcast group whenever the engine pool changes, runs
each sync as Ray calls on trainer ranks and engines, and checks every engine's fingerprints against
trainer rank 0's. The transport itself (buckets, the sync group, the object-store loader) is
`selfsteer.sync`, which the engines use without knowing which actor hosts them.
"""

from __future__ import annotations

from selfsteer.sync.buckets import plan_buckets
from selfsteer.sync.collective import SyncPeerTimeoutError, engine_ranks, peer_name


class SyncMismatchError(RuntimeError):
    """An engine's weights differ from the trainer's after a sync."""


def should_verify(mode: str, target, verified) -> bool:
    """sync.verify: "always", "never", or "first" (only a target no verified transfer reached yet)."""
    return mode == "always" or (mode == "first" and target not in verified)


class WeightSyncer:
    """Driver-side coordinator: plans buckets once, (re)connects engines, runs and verifies syncs."""

    def __init__(self, trainer, cfg):
        import ray

        self.trainer, self.cfg = trainer, cfg
        layout = ray.get(trainer.rank0.weight_layout.remote())
        self.buckets = plan_buckets(layout, int(cfg.sync.bucket_mb * 2**20))
        self.total_bytes = sum(b.nbytes for b in self.buckets)
        on_gpu = trainer.infos[0]["device"] == "cuda" and cfg.rollout.num_gpus > 0
        self.backend = "nccl" if on_gpu else "gloo"
        # Colocated engines sit beside trainer rank 0: they read its buckets in place instead.
        self.method = local_method(cfg.placement, on_gpu) or cfg.sync.method
        self._segment = None  # the shm segment (its path unlinked by close() if rank 0 could not)
        self.pool_stats: dict[str, float] = {}  # the colocated pool's last sync: peak live buckets, its size
        self._connected: tuple = ()
        self.version = 0  # bumped by every sync; engines report the version they hold
        self._verified_engines: tuple | None = None  # the pool the last verified sync reached
        self._copied: set[str] = set()  # actors (by name) a verified copy_into reached

    def connect(self, engines: list) -> None:
        """Form the broadcast group trainer rank 0 + engines (again whenever the pool changes)."""
        import ray

        if self.method != "collective" or tuple(engines) == self._connected:
            return
        timeout = self.cfg.sync.timeout_s
        world, starts = engine_ranks(ray.get([e.sync_group_size.remote() for e in engines], timeout=timeout))
        host, port = ray.get(self.trainer.rank0.open_sync_store.remote(world, timeout), timeout=timeout)
        calls = [r.init_sync_group.remote(host, port, world, self.backend, timeout) for r in self.trainer.ranks]
        calls += [e.init_sync_group.remote(host, port, start, world, self.backend, timeout)
                  for e, start in zip(engines, starts)]
        ray.get(calls, timeout=timeout)
        self._connected = tuple(engines)

    def copy_into(self, actor, name: str, method: str = "load_buckets", verify: bool | None = None) -> float:
        """The trainer's weights into one more actor's (or a list of actors') `method` (a refreshing
        reference; SIPO's policy B in the engines), through the object store, pushed once; verified
        like a sync (`verify` None: per sync.verify, the first copy for each name). Returns seconds."""
        import time

        import ray

        sc, start = self.cfg.sync, time.perf_counter()
        if verify is None:
            verify = should_verify(sc.verify, name, self._copied)
        pushes = [r.push_weights.remote(self.buckets, "object_store", verify) for r in self.trainer.ranks]
        sent = _wait_all(pushes, [f"trainer rank {i}" for i in range(len(pushes))], sc.timeout_s)[0]
        actors = actor if isinstance(actor, list) else [actor]
        got = ray.get([getattr(a, method).remote(self.buckets, sent["refs"], verify) for a in actors],
                      timeout=sc.timeout_s)
        for i, fingerprints in enumerate(got):
            if verify and fingerprints != sent["fingerprints"]:
                who = name if len(actors) == 1 else f"{name} {i}"
                raise SyncMismatchError(f"{who}: weights differ from the trainer's after the copy")
        if verify:
            self._copied.add(name)
        return time.perf_counter() - start

    def resync(self, engines: list) -> dict[str, float]:
        """After an engine restart: rebuild the group (the restarted engine left it) and sync all."""
        self._connected = ()
        self._verified_engines = None  # sync.verify=first checks the restarted engine
        return self.sync(engines)

    def sync(self, engines: list) -> dict[str, float]:
        """Send the trainer's current weights into every engine; raise if any engine differs."""
        import time

        import ray

        sc = self.cfg.sync
        start = time.perf_counter()
        self.connect(engines)
        version = self.version + 1
        verify = should_verify(sc.verify, tuple(engines), [self._verified_engines])
        ranks = [f"trainer rank {i}" for i in range(len(self.trainer.ranks))]
        if self.method in ("shm", "cuda_ipc"):  # bounded pools, mapped by the engines before they are written
            # shm: rank 0's segment feeds every engine; cuda_ipc: rank i's slots feed engine i on its GPU.
            readers = [len(engines) if i == 0 else 0 for i in range(len(ranks))] if self.method == "shm" else \
                [int(i < len(engines)) for i in range(len(ranks))]
            pools = _wait_all([r.open_local.remote(self.buckets, self.method, n, sc.timeout_s)
                               for r, n in zip(self.trainer.ranks, readers)], ranks, sc.timeout_s)
            if self.method == "shm" and pools and pools[0] is not None:
                self._segment = pools[0]["path"]
            handles = [{**pools[0], "reader": i} for i in range(len(engines))] if self.method == "shm" else \
                [{**pools[i], "reader": 0} for i in range(len(engines))]
        pushes = [r.push_weights.remote(self.buckets, self.method, verify, version) for r in self.trainer.ranks]
        try:
            if self.method in ("shm", "cuda_ipc"):  # engines load bucket i while the trainer packs bucket i + 1
                received = [e.receive_local.remote(self.method, h, self.buckets, verify, version, sc.timeout_s)
                            for e, h in zip(engines, handles)]
                results = _wait_all(pushes + received, ranks + [peer_name(i + 1) for i in range(len(engines))],
                                    sc.timeout_s)
                sent, got = results[0], results[len(pushes):]
                self.pool_stats = {"sync/pool_peak_buckets": float(max(r["peak_live"] for r in results[:len(pushes)])),
                                   "sync/pool_mbytes": max(r["pool_bytes"] for r in results[:len(pushes)]) / 2 ** 20}
                if self.method == "cuda_ipc":
                    # Every engine holds the weights now: the trainer ranks free their pools before the
                    # engines take their KV cache back (two-stage wake; selfsteer.plan.colocated "sync").
                    _wait_all([r.release_local.remote() for r in self.trainer.ranks], ranks, sc.timeout_s)
            elif self.method == "collective":
                received = [e.receive_weights.remote(self.buckets, verify, version) for e in engines]
                names = [f"trainer rank {i}" for i in range(len(pushes))] + [peer_name(i + 1) for i in range(len(engines))]
                results = _wait_all(pushes + received, names, sc.timeout_s)
                sent, got = results[0], results[len(pushes):]
            else:
                sent = _wait_all(pushes, [f"trainer rank {i}" for i in range(len(pushes))], sc.timeout_s)[0]
                got = _wait_all([e.load_buckets.remote(self.buckets, sent["refs"], verify, version) for e in engines],
                                [peer_name(i + 1) for i in range(len(engines))], sc.timeout_s)
        except (SyncPeerTimeoutError, ray.exceptions.RayError):
            self._connected = ()  # a half-finished broadcast leaves the group unusable
            raise
        if self.method in ("shm", "cuda_ipc"):  # the engines' KV caches, once the trainer's buckets are freed
            _wait_all([e.finish_wake.remote() for e in engines], [peer_name(i + 1) for i in range(len(engines))],
                      sc.timeout_s)
        if verify:
            for i, fps in enumerate(got):
                if fps != sent["fingerprints"]:
                    raise SyncMismatchError(f"rollout engine {i}: weights differ from trainer rank 0 after sync")
            self._verified_engines = tuple(engines)
        self.version = version
        seconds = time.perf_counter() - start
        return {"sync/seconds": seconds, "sync/buckets": float(len(self.buckets)), "sync/shm": float(self.method == "shm"),
                "sync/gbytes": self.total_bytes / 1e9, "sync/gbps": self.total_bytes / 1e9 / max(seconds, 1e-9),
                **self.pool_stats}


    def close(self) -> None:
        """Unlink the shm segment if trainer rank 0 died before it could (its own close is the rule)."""
        import os

        if self._segment:
            try:
                os.unlink(self._segment)
            except FileNotFoundError:
                pass
            self._segment = None


def local_method(placement: str, on_gpu: bool):
    """The transport a colocated layout uses (None: the separate layout keeps `sync.method`)."""
    if placement != "colocated":
        return None
    return "cuda_ipc" if on_gpu else "shm"


# Peers report a stalled member themselves at `timeout_s` (SyncPeerTimeoutError); the driver waits
# a little longer so that named error, not its own anonymous timeout, is what the user sees.
_DRIVER_GRACE_S = 10.0


def _wait_all(refs: list, names: list[str], timeout_s: float) -> list:
    """Results of `refs`; the first failure is raised at once, a silent peer is named at the bound."""
    import time

    import ray

    name_of = dict(zip(refs, names))
    pending, deadline = list(refs), time.monotonic() + timeout_s + _DRIVER_GRACE_S
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0))
        if not ready:
            raise SyncPeerTimeoutError(f"weight sync did not finish within sync.timeout_s={timeout_s} s; "
                                       f"still waiting on: {', '.join(name_of[r] for r in pending)}")
        try:
            ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, SyncPeerTimeoutError):
                raise SyncPeerTimeoutError(str(exc.cause)) from exc
            raise
    return ray.get(refs)

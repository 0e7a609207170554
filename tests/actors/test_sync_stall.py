"""A sync peer that stops answering: the weight sync fails within `sync.timeout_s` (+ slack),
naming the peer, instead of hanging (issue 8, "no silent hangs"). Real gloo, real processes."""

from __future__ import annotations

import time

import pytest
import torch

from selfsteer.actors.syncer import _wait_all
from selfsteer.sync.collective import SyncGroup, SyncPeerTimeoutError, open_store

TIMEOUT_S = 4
SLACK_S = 10  # store polling and Ray scheduling on a loaded 2-core box; far below a hang


class Peer:
    """Sync rank `rank`: behaves (`ok`), never joins the sync (`absent`) or joins then stalls (`stall`)."""

    def __init__(self, host: str, port: int, rank: int, world: int):
        self.rank, self.args, self.store = rank, (host, port, rank, world, "gloo", TIMEOUT_S), None

    def ready(self) -> int:
        return self.rank

    def open(self) -> int:
        """Rank 0 opens the store (as trainer rank 0 does) and tells the others its port."""
        self.store = open_store(self.args[0], self.args[3], TIMEOUT_S)
        return self.store.port

    def connect(self) -> int:
        self.group = SyncGroup(*self.args, store=self.store)  # every member connects: the group forms
        return self.rank

    def sync(self, mode: str, buckets: int = 3) -> float:
        if mode == "absent":
            time.sleep(3600)
        self.group.rendezvous()
        if mode == "stall":
            time.sleep(3600)
        tensor = torch.full((1000,), float(self.rank == 0))
        for _ in range(buckets):
            self.group.broadcast(tensor, src=0)
        return float(tensor[0])


def _peers(world: int) -> list:
    import ray

    actor = ray.remote(num_cpus=0)(Peer)
    root = actor.remote("127.0.0.1", 0, 0, world)
    port = ray.get(root.open.remote(), timeout=60)
    peers = [root] + [actor.remote("127.0.0.1", port, rank, world) for rank in range(1, world)]
    ray.get([p.ready.remote() for p in peers], timeout=60)  # all started: forming the group fits TIMEOUT_S
    return peers


@pytest.mark.parametrize("mode, message", [
    ("absent", r"sync rank 2 \(rollout engine 1\) did not join weight sync 1 within sync.timeout_s=4"),
    ("stall", r"weight-sync broadcast did not complete within sync.timeout_s=4 s \(a peer stalled mid-transfer\)"),
])
def test_stalled_sync_peer_is_named_within_the_bound(ray_local, mode, message):
    import ray

    world = 3
    peers = _peers(world)
    try:
        assert ray.get([p.connect.remote() for p in peers], timeout=60) == [0, 1, 2]
        start = time.monotonic()
        refs = [p.sync.remote("ok") for p in peers[:2]] + [peers[2].sync.remote(mode)]
        names = ["trainer rank 0", "rollout engine 0", "rollout engine 1"]
        with pytest.raises(SyncPeerTimeoutError, match=message):
            _wait_all(refs, names, TIMEOUT_S)
        elapsed = time.monotonic() - start
        print(f"{mode}: named after {elapsed:.1f} s")
        assert elapsed < TIMEOUT_S + SLACK_S
    finally:
        for p in peers:
            ray.kill(p)


def test_healthy_peers_sync_and_a_silent_one_is_named_by_the_driver(ray_local, monkeypatch):
    import ray

    from selfsteer.actors import syncer

    monkeypatch.setattr(syncer, "_DRIVER_GRACE_S", 1.0)

    world = 2
    peers = _peers(world)
    try:
        ray.get([p.connect.remote() for p in peers], timeout=60)
        # Healthy: every rank ends with the root's value, twice (the rendezvous counter advances).
        for _ in range(2):
            assert _wait_all([p.sync.remote("ok") for p in peers], ["trainer rank 0", "rollout engine 0"], TIMEOUT_S) == [1.0, 1.0]
        # A peer that answers nothing at all (not even its own timeout): the driver names it at the bound.
        start = time.monotonic()
        silent = [peers[1].sync.remote("absent")]
        with pytest.raises(SyncPeerTimeoutError, match=r"still waiting on: rollout engine 0"):
            _wait_all(silent, ["rollout engine 0"], 1)
        assert time.monotonic() - start < 1 + 1 + SLACK_S
    finally:
        for p in peers:
            ray.kill(p)

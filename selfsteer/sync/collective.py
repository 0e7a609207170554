"""The collective transport: a standalone broadcast group from trainer rank 0 to the rollout engines.

The sync group is a standalone process group (its own TCPStore), separate from the trainer's
default group, so trainer ranks and engines can join without `ray.util.collective` and without
disturbing DeepSpeed. Rank 0 of the sync group is trainer rank 0; then each engine takes one rank
per receiving process (a vLLM engine: one per tensor-parallel worker), in engine order.
The number of collective calls grows with the number of buckets, not of parameters.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from typing import Optional

import torch
import torch.distributed as dist

from selfsteer.sync.buckets import Bucket, FlatBuffers, fingerprint


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def node_ip() -> str:
    """Address other nodes reach this process on (loopback when Ray runs on one machine)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:  # not inside Ray: a local test
        pass
    return "127.0.0.1"


def loopback_bind_env() -> dict[str, str]:
    """Environment that binds gloo's process groups (and vLLM's sockets) to loopback.

    Gloo listens on the address the hostname resolves to unless GLOO_SOCKET_IFNAME names an
    interface; on a cloud VM that is the LAN address (issue #26 item 12), so a local run names the
    loopback interface (the one holding 127.0.0.1) explicitly.
    """
    import psutil

    names = [name for name, addrs in psutil.net_if_addrs().items()
             if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addrs)]
    env = {"VLLM_HOST_IP": "127.0.0.1"}
    if names:
        env["GLOO_SOCKET_IFNAME"] = names[0]
    return env


def peer_name(rank: int) -> str:
    """What sync rank `rank` is, for error messages (rank 0 = trainer rank 0, i = engine i - 1)."""
    return "trainer rank 0" if rank == 0 else f"rollout engine {rank - 1}"


class SyncPeerTimeoutError(TimeoutError):
    """A sync peer did not arrive (or stalled mid-transfer) within `sync.timeout_s`."""


def open_store(host: str, world_size: int, timeout_s: float) -> dist.TCPStore:
    """The group's store server, on a socket bound to `host` (port picked by the OS as it binds).

    Picking a free port first and binding it later races with every outgoing connection on the
    node (they take ephemeral ports from the same range): CI saw EADDRINUSE exactly there. And a
    TCPStore left to bind on its own listens on every interface, whatever `host` says.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    store = dist.TCPStore(host, sock.getsockname()[1], world_size, True,
                          timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False,
                          master_listen_fd=sock.fileno())
    sock.detach()  # the store serves on this descriptor from now on; Python must not close it
    return store


# The sync group's NCCL error handling (torch's ProcessGroupNCCL reads these when a group is built).
# Left at torch's defaults (async error handling 3, SkipCleanUp) a broadcast that outlasts the
# timeout is caught by NCCL's watchdog thread, which ends the whole process: the engine or trainer
# rank dies instead of the driver getting SyncPeerTimeoutError. With blocking wait the waiting
# call itself raises once sync.timeout_s has passed, and CleanUpOnly (2) has the watchdog abort the
# group's communicators without killing the process. The trainer's default group keeps torch's
# defaults (and its own trainer.dist_timeout_s).
NCCL_SYNC_ENV = {"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


@contextlib.contextmanager
def scoped_env(values: dict[str, str]):
    """Set `values` in os.environ for the block, then restore what was there (or unset)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class SyncGroup:
    """A standalone broadcast group: gloo on CPU, NCCL on GPU (same code path).

    Rank 0 passes the server `store` it opened with `open_store` (peers connect to its port).
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
                 store: Optional[dist.TCPStore] = None):
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.timeout, self.timeout_s, self._syncs = timeout, timeout_s, 0
        self.store = store if store is not None else dist.TCPStore(host, port, world_size, rank == 0, timeout=timeout)
        if backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            with scoped_env(NCCL_SYNC_ENV):  # read by the group's constructor: this group only
                self.pg = dist.ProcessGroupNCCL(self.store, rank, world_size, options)
        elif backend == "gloo":
            self.pg = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)
        else:
            raise ValueError(f"unknown sync backend {backend!r}; valid: gloo, nccl")

    def rendezvous(self) -> None:
        """Meet every peer in the store before a sync's first broadcast.

        A collective that times out cannot say who is missing; the store can, so a peer that never
        joins is named here (within `timeout_s`) instead of failing as an anonymous gloo/NCCL timeout.
        """
        self._syncs += 1
        keys = [f"sync/{self._syncs}/{r}" for r in range(self.world_size)]
        self.store.set(keys[self.rank], "1")
        try:
            self.store.wait(keys, self.timeout)
        except Exception as exc:  # torch raises DistStoreError (a RuntimeError) on timeout
            missing = [r for r, key in enumerate(keys) if not self.store.check([key])]
            names = ", ".join(f"sync rank {r} ({peer_name(r)})" for r in missing) or "a peer"
            raise SyncPeerTimeoutError(f"{peer_name(self.rank)}: {names} did not join weight sync "
                                       f"{self._syncs} within sync.timeout_s={self.timeout_s} s") from exc

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        self.wait(self.broadcast_async(tensor, src))

    def broadcast_async(self, tensor: torch.Tensor, src: int = 0):
        """Start a broadcast; returns its work handle (`.wait()`). Keep `tensor` untouched until then."""
        opts = dist.BroadcastOptions()
        opts.rootRank = src
        return self.pg.broadcast([tensor], opts)

    def wait(self, work) -> None:
        """Wait for a broadcast started by `broadcast_async`; a peer that stalls mid-transfer is named."""
        try:
            work.wait()
        except RuntimeError as exc:  # a peer joined, then stalled mid-transfer
            raise SyncPeerTimeoutError(f"{peer_name(self.rank)}: weight-sync broadcast did not complete within "
                                       f"sync.timeout_s={self.timeout_s} s (a peer stalled mid-transfer): {exc}") from exc

    def close(self) -> None:
        # Drop references; the process group shuts down with its last reference.
        self.pg = None
        self.store = None


def engine_ranks(group_sizes: list[int]) -> tuple[int, list[int]]:
    """World size and each engine's first rank, given how many processes each engine puts in.

    >>> engine_ranks([2, 1, 4])
    (8, [1, 3, 4])
    """
    if any(int(n) < 1 for n in group_sizes):
        raise ValueError(f"every engine joins the sync group with at least one process, got {group_sizes}")
    starts, next_rank = [], 1
    for n in group_sizes:
        starts.append(next_rank)
        next_rank += int(n)
    return next_rank, starts


def receive_buckets(group: SyncGroup, buckets: list[Bucket], buffers: FlatBuffers, device, load,
                    verify: bool) -> list[str]:
    """Receive every bucket from sync rank 0 and pass it to `load(bucket, flat)`, in order.

    The next bucket's receive is posted before the current one is loaded, so the transfer and
    the load overlap (two buffer slots). Returns the buckets' fingerprints when `verify`.
    """
    def post(i: int):
        flat = buffers.get(buckets[i], device, slot=i % 2)
        return flat, group.broadcast_async(flat, src=0)

    fingerprints = []
    ahead = post(0) if buckets else None
    for i, bucket in enumerate(buckets):
        flat, work = ahead
        group.wait(work)
        ahead = post(i + 1) if i + 1 < len(buckets) else None
        load(bucket, flat)
        if verify:
            fingerprints.append(fingerprint(flat))
    return fingerprints

"""Weight sync from trainer rank 0 into rollout engines, in fixed-size flat buckets.

The sync group is a standalone process group (its own TCPStore), separate from the trainer's
default group, so trainer ranks and engines can join without `ray.util.collective` and without
disturbing DeepSpeed. Rank 0 of the sync group is trainer rank 0; then each engine takes one rank
per receiving process (a vLLM engine: one per tensor-parallel worker), in engine order.
The number of collective calls grows with the number of buckets, not of parameters.
"""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TensorSlot:
    name: str
    shape: tuple[int, ...]
    offset: int  # elements into the bucket
    numel: int


@dataclass(frozen=True)
class Bucket:
    dtype: str  # e.g. "float32": one dtype per bucket so it packs into one flat tensor
    numel: int
    slots: tuple[TensorSlot, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def plan_buckets(named_shapes: Iterable[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int) -> list[Bucket]:
    """Group tensors, in order, into buckets of at most `bucket_bytes` (a larger tensor gets its own)."""
    buckets: list[Bucket] = []
    current: list[TensorSlot] = []
    current_dtype, used = None, 0

    def flush():
        nonlocal current, used
        if current:
            buckets.append(Bucket(str(current_dtype).replace("torch.", ""), used, tuple(current)))
        current, used = [], 0

    for name, shape, dtype in named_shapes:
        numel = 1
        for d in shape:
            numel *= int(d)
        size = numel * torch.empty((), dtype=dtype).element_size()
        if current and (dtype != current_dtype or used * _elem(current_dtype) + size > bucket_bytes):
            flush()
        current_dtype = dtype
        current.append(TensorSlot(name, tuple(int(d) for d in shape), used, numel))
        used += numel
    flush()
    return buckets


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class FlatBuffers:
    """Reusable flat bucket buffers per (dtype, slot), so a CPU sync writes into warm pages.

    A fresh CPU buffer of a few MB or more comes straight from mmap, and the first write to each
    of its pages faults: packing into one was 5x slower here (benchmarks/weight_sync.py --profile).
    Two slots let one bucket be packed or loaded while the other is on the wire. On GPU every
    call gets a new tensor: the caching allocator already reuses the block, and keeps it free for
    training in between.
    """

    def __init__(self):
        self._flat: dict[tuple[str, int], torch.Tensor] = {}

    def get(self, bucket: Bucket, device="cpu", slot: int = 0) -> torch.Tensor:
        if torch.device(device).type != "cpu":
            return torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=device)
        flat = self._flat.get((bucket.dtype, slot))
        if flat is None or flat.numel() < bucket.numel:
            flat = self._flat[(bucket.dtype, slot)] = torch.empty(bucket.numel, dtype=bucket.torch_dtype)
        return flat[:bucket.numel]


def receive_buckets(group: "SyncGroup", buckets: list[Bucket], buffers: FlatBuffers, device, load,
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


def pack_bucket(bucket: Bucket, tensors: dict[str, torch.Tensor], device,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Copy the bucket's tensors into one flat tensor (`out` if given, e.g. from `FlatBuffers`)."""
    flat = torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=device) if out is None else out
    for slot in bucket.slots:
        flat[slot.offset:slot.offset + slot.numel].copy_(tensors[slot.name].reshape(-1))
    return flat


def unpack_bucket(bucket: Bucket, flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    for slot in bucket.slots:
        yield slot.name, flat[slot.offset:slot.offset + slot.numel].view(slot.shape)


def load_object_buckets(buckets: list, flats: list, load, verify: bool) -> list[str]:
    """Object-store path, receiving side: resolve each bucket, `load` its named tensors; fingerprints."""
    import ray

    fingerprints = []
    for bucket, flat in zip(buckets, flats):
        flat = ray.get(flat) if isinstance(flat, ray.ObjectRef) else flat
        load(unpack_bucket(bucket, flat))
        if verify:
            fingerprints.append(fingerprint(flat))
    return fingerprints


@torch.no_grad()
def copy_named(module, named_tensors: Iterable[tuple[str, torch.Tensor]], owner: str) -> None:
    """Copy tensors into `module`'s parameters by name (in place: views and tying stay intact)."""
    params = dict(module.named_parameters())
    for name, tensor in named_tensors:
        if name not in params:
            raise KeyError(f"{owner} has no parameter {name!r}")
        params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def fingerprint(flat: torch.Tensor) -> str:
    """Content hash of a bucket's bytes, to verify a sync bit for bit.

    XXH3 (64 bit), hashed in place: it runs at memory speed, where sha256 over a copy ran at a
    fifth of the sync's bandwidth. It guards against a wrong or torn transfer, not an adversary.
    """
    import xxhash

    data = flat.detach().to("cpu").contiguous().view(torch.uint8).numpy()
    return xxhash.xxh3_64_hexdigest(data)


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


class SyncMismatchError(RuntimeError):
    """An engine's weights differ from the trainer's after a sync."""


class WeightSyncer:
    """Driver-side coordinator: plans buckets once, (re)connects engines, runs and verifies syncs."""

    def __init__(self, trainer, cfg):
        import ray

        self.trainer, self.cfg = trainer, cfg
        layout = ray.get(trainer.rank0.weight_layout.remote())
        self.buckets = plan_buckets(layout, int(cfg.sync.bucket_mb * 2**20))
        self.total_bytes = sum(b.numel * _elem(b.torch_dtype) for b in self.buckets)
        on_gpu = trainer.infos[0]["device"] == "cuda" and cfg.rollout.num_gpus > 0
        self.backend = "nccl" if on_gpu else "gloo"
        self._connected: tuple = ()
        self.version = 0  # bumped by every sync; engines report the version they hold

    def connect(self, engines: list) -> None:
        """Form the broadcast group trainer rank 0 + engines (again whenever the pool changes)."""
        import ray

        if self.cfg.sync.method != "collective" or tuple(engines) == self._connected:
            return
        timeout = self.cfg.sync.timeout_s
        world, starts = engine_ranks(ray.get([e.sync_group_size.remote() for e in engines], timeout=timeout))
        host, port = ray.get(self.trainer.rank0.open_sync_store.remote(world, timeout), timeout=timeout)
        calls = [r.init_sync_group.remote(host, port, world, self.backend, timeout) for r in self.trainer.ranks]
        calls += [e.init_sync_group.remote(host, port, start, world, self.backend, timeout)
                  for e, start in zip(engines, starts)]
        ray.get(calls, timeout=timeout)
        self._connected = tuple(engines)

    def copy_into(self, actor, name: str, method: str = "load_buckets") -> float:
        """The trainer's weights into one more actor's `method` (a refreshing reference; SIPO's
        policy B in the engines), through the object store; verified like a sync. Returns seconds."""
        import time

        import ray

        sc, start = self.cfg.sync, time.perf_counter()
        pushes = [r.push_weights.remote(self.buckets, "object_store", sc.verify) for r in self.trainer.ranks]
        sent = _wait_all(pushes, [f"trainer rank {i}" for i in range(len(pushes))], sc.timeout_s)[0]
        got = ray.get(getattr(actor, method).remote(self.buckets, sent["refs"], sc.verify), timeout=sc.timeout_s)
        if sc.verify and got != sent["fingerprints"]:
            raise SyncMismatchError(f"{name}: weights differ from the trainer's after the copy")
        return time.perf_counter() - start

    def resync(self, engines: list) -> dict[str, float]:
        """After an engine restart: rebuild the group (the restarted engine left it) and sync all."""
        self._connected = ()
        return self.sync(engines)

    def sync(self, engines: list) -> dict[str, float]:
        """Send the trainer's current weights into every engine; raise if any engine differs."""
        import time

        import ray

        sc = self.cfg.sync
        start = time.perf_counter()
        self.connect(engines)
        version = self.version + 1
        pushes = [r.push_weights.remote(self.buckets, sc.method, sc.verify) for r in self.trainer.ranks]
        try:
            if sc.method == "collective":
                received = [e.receive_weights.remote(self.buckets, sc.verify, version) for e in engines]
                names = [f"trainer rank {i}" for i in range(len(pushes))] + [peer_name(i + 1) for i in range(len(engines))]
                results = _wait_all(pushes + received, names, sc.timeout_s)
                sent, got = results[0], results[len(pushes):]
            else:
                sent = _wait_all(pushes, [f"trainer rank {i}" for i in range(len(pushes))], sc.timeout_s)[0]
                got = _wait_all([e.load_buckets.remote(self.buckets, sent["refs"], sc.verify, version) for e in engines],
                                [peer_name(i + 1) for i in range(len(engines))], sc.timeout_s)
        except (SyncPeerTimeoutError, ray.exceptions.RayError):
            self._connected = ()  # a half-finished broadcast leaves the group unusable
            raise
        if sc.verify:
            for i, fps in enumerate(got):
                if fps != sent["fingerprints"]:
                    raise SyncMismatchError(f"rollout engine {i}: weights differ from trainer rank 0 after sync")
        self.version = version
        seconds = time.perf_counter() - start
        return {"sync/seconds": seconds, "sync/buckets": float(len(self.buckets)),
                "sync/gbytes": self.total_bytes / 1e9, "sync/gbps": self.total_bytes / 1e9 / max(seconds, 1e-9)}


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

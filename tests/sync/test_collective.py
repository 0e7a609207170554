"""A real gloo SyncGroup across processes, engine ranks, overlapped receives (selfsteer.sync.collective)."""

from __future__ import annotations

import datetime
import multiprocessing as mp

import pytest
import torch
import torch.distributed as dist

from selfsteer.sync.buckets import FlatBuffers, fingerprint, pack_bucket, plan_buckets, unpack_bucket
from selfsteer.sync.collective import SyncGroup, engine_ranks, free_port, open_store, receive_buckets
from tests.sync.test_buckets import _mixed_tensors

F32 = torch.float32


# ---- SyncGroup over real gloo, in spawned processes -------------------------------------------

def _bucket_plan():
    tensors = _mixed_tensors()
    del tensors["transposed"]
    layout = [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    return tensors, plan_buckets(layout, 64)


def _receive_worker(rank: int, world_size: int, port: int, results) -> None:
    """A receiver (an engine in production): allocate each bucket, receive it, report its bytes."""
    try:
        _, buckets = _bucket_plan()
        group = SyncGroup("127.0.0.1", port, rank, world_size, "gloo", timeout_s=60)
        received, fingerprints = {}, []
        for bucket in buckets:
            flat = torch.full((bucket.numel,), 7, dtype=bucket.torch_dtype)  # garbage until the broadcast
            group.broadcast(flat, src=0)
            received.update({n: _record(t) for n, t in unpack_bucket(bucket, flat)})
            fingerprints.append(fingerprint(flat))
        group.close()
        results.put((rank, (received, fingerprints)))
    except BaseException as exc:  # report instead of leaving the parent waiting on results.get
        results.put((rank, repr(exc)))


def _record(t: torch.Tensor) -> tuple:
    return str(t.dtype), tuple(t.shape), t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def test_sync_group_gloo_broadcast_is_bit_identical():
    # This process is sync rank 0 (trainer rank 0 in production); two spawned receivers are ranks 1, 2.
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    world_size = 3
    store = open_store("127.0.0.1", world_size, 60)  # rank 0 listens first, on a port the OS picked
    port = store.port
    procs = [ctx.Process(target=_receive_worker, args=(rank, world_size, port, results), daemon=True)
             for rank in (1, 2)]
    for p in procs:
        p.start()
    try:
        tensors, buckets = _bucket_plan()
        assert len({b.dtype for b in buckets}) == 3 and len(buckets) > 3  # several buckets, mixed dtypes
        group = SyncGroup("127.0.0.1", port, 0, world_size, "gloo", timeout_s=60, store=store)
        sent_fps = []
        for bucket in buckets:
            flat = pack_bucket(bucket, tensors, "cpu")
            group.broadcast(flat, src=0)
            sent_fps.append(fingerprint(flat))
        got = dict(results.get(timeout=60) for _ in procs)
        group.close()
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    expected = {n: _record(t) for n, t in tensors.items()}
    for rank in (1, 2):
        assert isinstance(got[rank], tuple), got[rank]  # else the worker's exception
        received, fingerprints = got[rank]
        assert received == expected, rank
        assert fingerprints == sent_fps, rank
    assert [p.exitcode for p in procs] == [0, 0]


@pytest.mark.parametrize("sizes, world, starts", [
    ([], 1, []),                       # trainer rank 0 alone
    ([1, 1], 3, [1, 2]),               # HF or single-worker engines: engine i is rank i + 1
    ([2, 2], 5, [1, 3]),               # two TP=2 vLLM engines: workers 1,2 and 3,4
    ([4, 1, 2], 8, [1, 5, 6]),         # mixed pool after a resize
])
def test_engine_ranks_count_every_receiving_worker(sizes, world, starts):
    assert engine_ranks(sizes) == (world, starts)
    taken = [start + k for start, n in zip(starts, sizes) for k in range(n)]
    assert taken == list(range(1, world))  # every rank but the trainer's, each exactly once


def test_engine_ranks_rejects_an_engine_without_processes():
    with pytest.raises(ValueError, match=r"at least one process, got \[1, 0\]"):
        engine_ranks([1, 0])


def test_receive_buckets_overlaps_and_stays_exact():
    """Two reused slots, the next receive posted before each load: every bucket still arrives whole."""
    import threading

    gen = torch.Generator().manual_seed(5)
    tensors = {f"w{i}": torch.randn(40 + 13 * i, generator=gen) for i in range(7)}
    buckets = plan_buckets([(n, tuple(t.shape), F32) for n, t in tensors.items()], 100 * 4)
    assert len(buckets) >= 4
    store, box = open_store("127.0.0.1", 2, 60), {}
    port = store.port
    sender = threading.Thread(target=lambda: box.update(group=SyncGroup("127.0.0.1", port, 0, 2, "gloo", 60, store)))
    sender.start()
    group = SyncGroup("127.0.0.1", port, 1, 2, "gloo", 60)
    sender.join()
    flats = [pack_bucket(b, tensors, "cpu") for b in buckets]
    sender = threading.Thread(target=lambda: [box["group"].broadcast(f, src=0) for f in flats])
    sender.start()
    loaded = {}
    buffers = FlatBuffers()
    fps = receive_buckets(group, buckets, buffers, "cpu",
                          lambda b, flat: loaded.update({n: t.clone() for n, t in unpack_bucket(b, flat)}), True)
    sender.join()
    assert fps == [fingerprint(f) for f in flats]
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[n], tensors[n]) for n in tensors)
    assert buffers.get(buckets[0], slot=0).data_ptr() != buffers.get(buckets[0], slot=1).data_ptr()
    sender = threading.Thread(target=lambda: [box["group"].broadcast(f, src=0) for f in flats])
    sender.start()
    assert receive_buckets(group, buckets, buffers, "cpu", lambda b, flat: None, False) == []
    sender.join()


def test_sync_group_rejects_unknown_backend():
    with pytest.raises(ValueError, match="unknown sync backend 'mpi'; valid: gloo, nccl"):
        SyncGroup("127.0.0.1", free_port(), 0, 1, "mpi", timeout_s=5)


def test_open_store_listens_on_the_port_it_reports():
    """The OS picks the port as the store binds: nothing can take it between choosing and binding."""
    import socket

    store = open_store("127.0.0.1", 2, 10)
    assert 1024 <= store.port <= 65535
    with socket.socket() as sock:
        with pytest.raises(OSError):  # EADDRINUSE: the store holds it
            sock.bind(("127.0.0.1", store.port))
    client = dist.TCPStore("127.0.0.1", store.port, 2, False, timeout=datetime.timedelta(seconds=10))
    client.set("k", "v")
    assert store.get("k") == b"v"


def test_free_port_is_bindable():
    import socket

    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_nccl_sync_group_env_raises_instead_of_killing_the_process():
    """The sync group is built with blocking wait (the waiting call raises at sync.timeout_s) and
    CleanUpOnly error handling (the watchdog aborts the communicators, not the process)."""
    from selfsteer.sync.collective import NCCL_SYNC_ENV

    assert NCCL_SYNC_ENV == {"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


def test_scoped_env_sets_then_restores_set_and_unset_values(monkeypatch):
    import os

    from selfsteer.sync.collective import scoped_env

    monkeypatch.setenv("TORCH_NCCL_BLOCKING_WAIT", "0")
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    with scoped_env({"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}):
        assert os.environ["TORCH_NCCL_BLOCKING_WAIT"] == "1"
        assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "2"
    assert os.environ["TORCH_NCCL_BLOCKING_WAIT"] == "0"  # the trainer's default group keeps torch's handling
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in os.environ


def test_the_trainers_default_group_has_its_own_timeout():
    from selfsteer.config.schema import ConfigError, RunConfig, load_config

    cfg = load_config("configs/tiny_cpu.yaml", ["sync.timeout_s=30", "trainer.dist_timeout_s=900"])
    assert (cfg.sync.timeout_s, cfg.trainer.dist_timeout_s) == (30, 900)
    assert RunConfig().trainer.dist_timeout_s == 1800
    with pytest.raises(ConfigError, match="trainer.dist_timeout_s"):
        load_config("configs/tiny_cpu.yaml", ["trainer.dist_timeout_s=0"])

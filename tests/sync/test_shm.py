"""The shared-memory transport: exact round trip, and no segment left behind."""

import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest
import torch

from selfsteer.sync import shm
from selfsteer.sync.buckets import fingerprint, plan_buckets, unpack_bucket


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g),
            "c": torch.randn(4, 4, generator=g).to(torch.bfloat16), "d": torch.arange(5, dtype=torch.float32)}


def _buckets(t):
    return plan_buckets([(n, tuple(x.shape), x.dtype) for n, x in t.items()], bucket_bytes=64)


def test_offsets_aligned_and_sized():
    t = _tensors()
    buckets = _buckets(t)
    offsets, total = shm.bucket_offsets(buckets)
    assert all(o % 64 == 0 for o in offsets)
    assert total >= offsets[-1] + buckets[-1].nbytes


def test_round_trip_exact_and_fingerprints(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    t = _tensors()
    buckets = _buckets(t)
    assert len(buckets) > 2
    writer = shm.ShmWriter(buckets)
    sent = [fingerprint(writer.write(i, t)) for i in range(len(buckets))]
    got = {}
    fps = shm.receive_shm(writer.handle(), buckets, lambda b, v: got.update(
        {n: x.clone() for n, x in unpack_bucket(b, v)}), verify=True)
    assert fps == sent
    for name, x in t.items():
        assert got[name].dtype == x.dtype and torch.equal(got[name], x)
    # The reader sees the writer's later bytes (one segment, mapped shared), not a snapshot.
    t["d"] += 1
    writer.write(len(buckets) - 1, t)
    reader = shm.ShmReader(writer.handle(), buckets)
    assert torch.equal(list(unpack_bucket(buckets[-1], reader.views[-1]))[-1][1], t["d"])
    reader.close()
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_targets_receive_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    t = _tensors()
    buckets = _buckets(t)
    writer = shm.ShmWriter(buckets)
    for i in range(len(buckets)):
        writer.write(i, t)
    targets = [torch.zeros(b.numel, dtype=b.torch_dtype) for b in buckets]
    fps = shm.receive_shm(writer.handle(), buckets, None, verify=True, targets=targets)
    assert fps == [fingerprint(v) for v in writer.views]
    assert all(torch.equal(a, b) for a, b in zip(targets, writer.views))
    writer.close()


def _reader_dies(handle, buckets, ready):
    reader = shm.ShmReader(handle, buckets)
    ready.set()
    assert reader.views
    os.kill(os.getpid(), signal.SIGKILL)


def _writer_exits(queue):
    t = _tensors()
    writer = shm.ShmWriter(_buckets(t))
    queue.put(str(writer.path))
    # no close(): the writer's exit unlinks the segment


def test_no_leak_when_reader_dies_or_writer_exits(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    ctx = mp.get_context("fork")
    t = _tensors()
    buckets = _buckets(t)
    writer = shm.ShmWriter(buckets)
    ready = ctx.Event()
    p = ctx.Process(target=_reader_dies, args=(writer.handle(), buckets, ready))
    p.start()
    p.join(30)
    assert ready.is_set() and p.exitcode == -signal.SIGKILL
    writer.close()
    queue = ctx.Queue()
    p = ctx.Process(target=_writer_exits, args=(queue,))
    p.start()
    path = queue.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0 and not Path(path).exists()
    assert list(tmp_path.iterdir()) == []


def test_reader_loads_each_bucket_once_published_while_the_writer_writes(tmp_path, monkeypatch):
    import threading
    import time

    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    t = _tensors()
    buckets = _buckets(t)
    writer = shm.ShmWriter(buckets)
    for i in range(len(buckets)):  # sync 1's bytes: a reader of sync 2 must not take them
        writer.write(i, {n: torch.zeros_like(x) for n, x in t.items()})
    writer.begin(1)

    def write_slowly():
        writer.begin(2)
        for i in range(len(buckets)):
            time.sleep(0.05)
            writer.write(i, t)

    thread = threading.Thread(target=write_slowly)
    thread.start()
    got = {}
    fps = shm.receive_shm(writer.handle(), buckets, lambda b, v: got.update(
        {n: x.clone() for n, x in unpack_bucket(b, v)}), verify=True, version=2, timeout_s=30)
    thread.join()
    assert fps == [fingerprint(v) for v in writer.views]
    assert all(torch.equal(got[n], x) for n, x in t.items())
    with pytest.raises(TimeoutError, match="bucket 0 of weight sync 3"):
        shm.receive_shm(writer.handle(), buckets, lambda b, v: None, verify=False, version=3, timeout_s=0.2)
    writer.close()


def test_missing_segment_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="colocated"):
        shm.ShmReader({"path": str(tmp_path / "gone"), "nbytes": 64}, [])


def _receive(conn):
    assert conn.poll(30), "the child wrote no segment"
    return conn.recv()


def _writer_killed(conn):
    writer = shm.ShmWriter(_buckets(_tensors()), tag="selfsteer-trainer0")
    conn.send(str(writer.path))
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no finalizer: the segment stays, as after kill -9


def _writer_lives(conn, stop):
    writer = shm.ShmWriter(_buckets(_tensors()), tag="selfsteer-trainer0")
    conn.send(str(writer.path))
    stop.wait(60)
    writer.close()


def test_stale_segment_of_a_killed_writer_is_removed_and_a_live_ones_kept(tmp_path, monkeypatch):
    """Issue #26 item 13: a writer killed by SIGKILL leaves its segment; the next writer (and every
    run's start, see test_init_ray_removes_stale_segments) removes it, but not a live writer's."""
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    ctx = mp.get_context("fork")
    (receiver, sender), stop = ctx.Pipe(duplex=False), ctx.Event()
    killed = ctx.Process(target=_writer_killed, args=(sender,))
    killed.start()
    stale = Path(_receive(receiver))
    killed.join(30)
    assert killed.exitcode == -signal.SIGKILL and stale.exists()
    assert f"-pid{killed.pid}-" in stale.name  # the owner is named in the file
    live = ctx.Process(target=_writer_lives, args=(sender, stop))
    live.start()
    kept = Path(_receive(receiver))
    other_ns = tmp_path / "selfsteer-trainer0-ns1-pid1-start1-0123abcd.weights"  # another pid namespace's
    reused = tmp_path / f"selfsteer-trainer0-ns{shm._pid_namespace()}-pid{live.pid}-start1-0123abcd.weights"
    unrelated = tmp_path / "selfsteer-notes.txt"
    for path in (other_ns, reused, unrelated):
        path.write_bytes(b"x")
    try:
        writer = shm.ShmWriter(_buckets(_tensors()))
        assert not stale.exists() and not reused.exists()  # dead owner; a live pid that started later
        assert kept.exists() and other_ns.exists() and unrelated.exists()
        writer.close()
    finally:
        stop.set()
        live.join(30)
    assert not kept.exists()  # its owner unlinked it on close


def test_init_ray_removes_stale_segments(tmp_path, monkeypatch, ray_local):
    from selfsteer.actors.ray_start import init_ray
    from selfsteer.config.schema import RunConfig

    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    killed = ctx.Process(target=_writer_killed, args=(sender,))
    killed.start()
    stale = Path(_receive(receiver))
    killed.join(30)
    assert stale.exists()
    init_ray(RunConfig())
    assert not stale.exists()

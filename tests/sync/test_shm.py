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


def _write_all(writer, buckets, t, version, delay=0.0):
    """The trainer's side in a thread: every bucket of sync `version`; returns (thread, sent fingerprints)."""
    import threading
    import time

    sent = []

    def run():
        writer.begin(version, timeout_s=30)
        for i in range(len(buckets)):
            time.sleep(delay)
            sent.append(fingerprint(writer.write(i, t)))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, sent


def _collect(got):
    return lambda b, v: got.update({n: x.clone() for n, x in unpack_bucket(b, v)})


def test_pool_is_bounded_and_sized_by_the_largest_bucket(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    t = _tensors()
    buckets = _buckets(t)
    assert len(buckets) > shm.POOL_SLOTS
    header, slot, slots = shm.pool_layout(buckets, readers=3)
    assert header % 64 == 0 and slot % 64 == 0 and slot >= max(b.nbytes for b in buckets) and slots == shm.POOL_SLOTS
    writer = shm.ShmWriter(buckets, readers=3)
    assert writer.path.stat().st_size == header + shm.POOL_SLOTS * slot == writer.nbytes
    writer.close()


def test_round_trip_exact_through_a_two_slot_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    t = _tensors()
    buckets = _buckets(t)
    writer = shm.ShmWriter(buckets)
    thread, sent = _write_all(writer, buckets, t, version=1)
    got = {}
    shm.receive_shm({**writer.handle(), "reader": 0}, buckets, _collect(got), version=1, timeout_s=30)
    thread.join()
    assert len(sent) == len(buckets) and writer.peak_live <= shm.POOL_SLOTS and writer.live() == 0
    for name, x in t.items():
        assert got[name].dtype == x.dtype and torch.equal(got[name], x)
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_targets_receive_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    t = _tensors()
    buckets = _buckets(t)
    writer = shm.ShmWriter(buckets)
    thread, sent = _write_all(writer, buckets, t, version=1)
    targets = [torch.zeros(b.numel, dtype=b.torch_dtype) for b in buckets]
    shm.receive_shm(writer.handle(), buckets, None, targets=targets, version=1, timeout_s=30)
    thread.join()
    assert [fingerprint(x) for x in targets] == sent
    writer.close()


def test_writer_waits_for_every_reader_and_names_the_one_behind(tmp_path, monkeypatch):
    """Two engines read one segment: the writer refills a slot only when both loaded it, and a reader
    that never loads is named when the writer gives up."""
    import threading

    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    t = _tensors()
    buckets = _buckets(t)
    writer = shm.ShmWriter(buckets, readers=2)
    thread, sent = _write_all(writer, buckets, t, version=1, delay=0.01)
    got = [{}, {}]
    readers = [threading.Thread(target=shm.receive_pool, args=(shm.ShmReader({**writer.handle(), "reader": r}, buckets),
                                                                buckets, _collect(got[r]), None, 1, 30))
               for r in range(2)]
    for r in readers:
        r.start()
    for r in readers + [thread]:
        r.join()
    assert len(sent) == len(buckets) and 1 <= writer.peak_live <= shm.POOL_SLOTS
    assert all(torch.equal(g[n], x) for g in got for n, x in t.items())
    # Sync 2: reader 1 never comes, so bucket POOL_SLOTS cannot be written.
    writer.begin(2, timeout_s=0.3)
    reader0 = shm.ShmReader({**writer.handle(), "reader": 0}, buckets)
    for i in range(shm.POOL_SLOTS):
        writer.write(i, t)
        reader0.done(i)
    with pytest.raises(TimeoutError, match=r"rollout engine\(s\) 1 did not load bucket 0 of weight sync 2"):
        writer.write(shm.POOL_SLOTS, t)
    assert writer.live() == shm.POOL_SLOTS
    reader0.close()
    writer.close()


def _reader_dies(handle, buckets, ready):
    reader = shm.ShmReader(handle, buckets)
    ready.set()
    assert reader.slot_tensors
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


def test_reader_takes_only_the_current_sync(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    t = _tensors()
    buckets = _buckets(t)
    writer = shm.ShmWriter(buckets, slots=len(buckets))
    writer.begin(1)
    for i in range(len(buckets)):  # sync 1's bytes: a reader of sync 2 must not take them
        writer.write(i, {n: torch.zeros_like(x) for n, x in t.items()})
    thread, sent = _write_all(writer, buckets, t, version=2, delay=0.05)
    got = {}
    shm.receive_shm(writer.handle(), buckets, _collect(got), version=2, timeout_s=30)
    thread.join()
    assert all(torch.equal(got[n], x) for n, x in t.items())
    with pytest.raises(TimeoutError, match="bucket 0 of weight sync 3"):
        shm.receive_shm(writer.handle(), buckets, lambda b, v: None, version=3, timeout_s=0.2)
    writer.close()


def test_missing_segment_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="colocated"):
        shm.ShmReader({"path": str(tmp_path / "gone"), "nbytes": 64, "header_bytes": 64, "slot_bytes": 0,
                       "slots": 1}, [])


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

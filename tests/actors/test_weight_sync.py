"""Bucket planning, bit-exact packing and fingerprints, and a real gloo SyncGroup across processes."""

from __future__ import annotations

import datetime
import multiprocessing as mp

import pytest
import torch
import torch.distributed as dist

from selfsteer.actors.weight_sync import (
    Bucket, FlatBuffers, SyncGroup, TensorSlot, engine_ranks, fingerprint, free_port, open_store, pack_bucket, plan_buckets,
    receive_buckets, unpack_bucket,
)

F32 = torch.float32


def _names(bucket):
    return [s.name for s in bucket.slots]


def test_plan_buckets_hand_worked():
    # bucket_bytes 40 = ten float32 elements.
    layout = [("a", (2, 3), F32),   # 24 B
              ("b", (4,), F32),     # 16 B: 24 + 16 = 40 fits exactly
              ("c", (3,), F32),     # 12 B: 52 > 40, new bucket
              ("d", (20,), F32),    # 80 B: bigger than a bucket, its own
              ("e", (), F32),       # 4 B: after an oversized tensor, a new bucket
              ("f", (2,), torch.float16),  # dtype change
              ("g", (2,), F32)]     # dtype change back
    buckets = plan_buckets(layout, 40)
    assert buckets == [
        Bucket("float32", 10, (TensorSlot("a", (2, 3), 0, 6), TensorSlot("b", (4,), 6, 4))),
        Bucket("float32", 3, (TensorSlot("c", (3,), 0, 3),)),
        Bucket("float32", 20, (TensorSlot("d", (20,), 0, 20),)),
        Bucket("float32", 1, (TensorSlot("e", (), 0, 1),)),
        Bucket("float16", 2, (TensorSlot("f", (2,), 0, 2),)),
        Bucket("float32", 2, (TensorSlot("g", (2,), 0, 2),)),
    ]
    assert buckets[4].torch_dtype is torch.float16


def test_plan_buckets_oversized_first_tensor_and_element_sizes():
    # bfloat16 is 2 bytes: 10 elements = 20 bytes fit a 20-byte bucket, 11 do not.
    layout = [("big", (100,), torch.bfloat16), ("x", (10,), torch.bfloat16), ("y", (1,), torch.bfloat16)]
    buckets = plan_buckets(layout, 20)
    assert [_names(b) for b in buckets] == [["big"], ["x"], ["y"]]
    assert [b.dtype for b in buckets] == ["bfloat16"] * 3
    assert [_names(b) for b in plan_buckets(layout[1:], 22)] == [["x", "y"]]


def test_plan_buckets_empty_and_shape_types():
    assert plan_buckets([], 1024) == []
    (bucket,) = plan_buckets([("w", torch.Size([2, 2]), F32)], 1024)
    assert bucket.slots[0].shape == (2, 2) and type(bucket.slots[0].shape) is tuple


@pytest.mark.parametrize("bucket_bytes", [4, 64, 100, 1000, 10**6])
def test_plan_buckets_invariants(bucket_bytes):
    g = torch.Generator().manual_seed(0)
    dtypes = [F32, F32, torch.bfloat16, torch.float16, torch.int64]
    layout = []
    for i in range(60):
        shape = tuple(int(s) for s in torch.randint(1, 6, (int(torch.randint(0, 3, (1,), generator=g)),), generator=g))
        layout.append((f"t{i}", shape, dtypes[int(torch.randint(0, len(dtypes), (1,), generator=g))]))
    buckets = plan_buckets(layout, bucket_bytes)
    # Order kept, nothing lost or repeated.
    assert [s.name for b in buckets for s in b.slots] == [n for n, _, _ in layout]
    dtype_of = {n: d for n, _, d in layout}
    for b in buckets:
        elem = torch.empty((), dtype=b.torch_dtype).element_size()
        assert all(dtype_of[s.name] == b.torch_dtype for s in b.slots)  # one dtype per bucket
        assert b.numel * elem <= bucket_bytes or len(b.slots) == 1  # over the limit only when alone
        offsets = [s.offset for s in b.slots]
        assert offsets == [sum(s.numel for s in b.slots[:i]) for i in range(len(b.slots))]  # contiguous
        assert b.numel == sum(s.numel for s in b.slots)
    # Greedy: the next tensor (same dtype) would not have fit into the previous bucket.
    for prev, nxt in zip(buckets, buckets[1:]):
        if prev.torch_dtype == nxt.torch_dtype:
            elem = torch.empty((), dtype=prev.torch_dtype).element_size()
            assert (prev.numel + nxt.slots[0].numel) * elem > bucket_bytes


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "embed": torch.randn(7, 5, generator=g),
        "scalar": torch.tensor(-0.0),
        "special": torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-45, -0.0]),
        "cube": torch.randn(2, 3, 4, generator=g),
        "half": torch.randn(3, 3, generator=g).to(torch.bfloat16),
        "half2": torch.randn(5, generator=g).to(torch.bfloat16),
        "ids": torch.arange(6, dtype=torch.int64).reshape(3, 2) - 3,
        "transposed": torch.randn(4, 3, generator=g).t(),  # non-contiguous source
    }
    return tensors


def test_pack_unpack_round_trip_bit_exact():
    tensors = _mixed_tensors()
    layout = [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    buckets = plan_buckets(layout, 64)
    assert len(buckets) > 3
    seen = {}
    for bucket in buckets:
        flat = pack_bucket(bucket, tensors, "cpu")
        assert flat.shape == (bucket.numel,) and flat.dtype == bucket.torch_dtype
        for name, tensor in unpack_bucket(bucket, flat):
            seen[name] = tensor
    assert list(seen) == list(tensors)
    for name, original in tensors.items():
        got = seen[name]
        assert got.shape == original.shape and got.dtype == original.dtype, name
        assert torch.equal(_bits(got), _bits(original)), name


def test_unpacked_tensors_are_views_of_the_flat_bucket():
    tensors = {"a": torch.ones(2, 2), "b": torch.zeros(3)}
    (bucket,) = plan_buckets([(n, tuple(t.shape), t.dtype) for n, t in tensors.items()], 1 << 20)
    flat = pack_bucket(bucket, tensors, "cpu")
    assert flat.tolist() == [1, 1, 1, 1, 0, 0, 0]
    views = dict(unpack_bucket(bucket, flat))
    flat[4] = 9.0
    assert views["b"].tolist() == [9.0, 0.0, 0.0]


def test_flat_buffers_reuse_one_buffer_per_dtype_on_cpu():
    buffers = FlatBuffers()
    big, small = Bucket("float32", 100, ()), Bucket("float32", 40, ())
    first = buffers.get(big)
    assert first.shape == (100,) and first.dtype == F32
    again = buffers.get(small)
    assert again.shape == (40,) and again.data_ptr() == first.data_ptr()  # same pages, no new allocation
    half = buffers.get(Bucket("bfloat16", 100, ()))
    assert half.dtype == torch.bfloat16 and half.data_ptr() != first.data_ptr()
    grown = buffers.get(Bucket("float32", 300, ()))
    assert grown.shape == (300,)
    assert buffers.get(big).data_ptr() == grown.data_ptr()
    # Packing into a reused buffer gives the same bucket as packing into a fresh one.
    bucket = plan_buckets([("a", (3, 4), F32), ("b", (5,), F32)], 1 << 20)[0]
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    assert torch.equal(pack_bucket(bucket, tensors, "cpu", buffers.get(bucket)), pack_bucket(bucket, tensors, "cpu"))


def test_fingerprint_is_exact():
    flat = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    fp = fingerprint(flat)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fingerprint(flat.clone()) == fp
    changed = flat.clone()
    changed[637] = torch.nextafter(changed[637], torch.tensor(float("inf")))  # one ulp in one element
    assert fingerprint(changed) != fp
    assert fingerprint(torch.tensor([0.0])) != fingerprint(torch.tensor([-0.0]))  # bits, not values
    assert fingerprint(torch.ones(3, dtype=torch.bfloat16)) == fingerprint(torch.ones(3, dtype=torch.bfloat16))


def _toy_layout(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from selfsteer.toy import build_toy_model

    model = AutoModelForCausalLM.from_pretrained(build_toy_model(tmp_path_factory.mktemp("toy")))
    return [(n, tuple(p.shape), p.dtype) for n, p in model.named_parameters()]


@pytest.fixture(scope="module")
def toy_layout(tmp_path_factory):
    return _toy_layout(tmp_path_factory)


def test_toy_model_bucket_count_is_hand_computed(toy_layout):
    # Toy model: vocab 568, hidden 64, 2 layers, q 64x64, k/v 32x64 (2 kv heads x 16), o 64x64,
    # gate/up 128x64, down 64x128, two 64-norms per layer, a final norm; lm_head is tied (listed once).
    numel = {n: s for n, s, _ in toy_layout}
    assert len(toy_layout) == 1 + 2 * 9 + 1
    assert sum(torch.Size(s).numel() for s in numel.values()) == 568 * 64 + 2 * (36864 + 128) + 64
    # A bucket of 8192 float32 (one MLP matrix, 32 KiB), in named_parameters order q,k,v,o,gate,up,down,ln1,ln2:
    #   [embed: 36352 > 8192, alone]
    #   layer 0: [q 4096 + k 2048 + v 2048 = 8192] [o] [gate] [up] [down]          -> 5
    #   [l0.ln1 + l0.ln2 + l1.q + l1.k = 6272] [l1.v + l1.o = 6144] [gate] [up] [down] -> 5
    #   [l1.ln1 + l1.ln2 + norm]                                                     -> 1
    buckets = plan_buckets(toy_layout, 8192 * 4)
    assert len(buckets) == 12
    assert [len(b.slots) for b in buckets] == [1, 3, 1, 1, 1, 1, 4, 2, 1, 1, 1, 3]
    assert _names(buckets[-1]) == ["model.layers.1.input_layernorm.weight",
                                   "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"]
    # Everything in one bucket when it fits; one bucket per tensor when nothing pairs up.
    total_bytes = 4 * sum(torch.Size(s).numel() for s in numel.values())
    assert len(plan_buckets(toy_layout, total_bytes)) == 1
    assert len(plan_buckets(toy_layout, total_bytes - 1)) == 2
    assert len(plan_buckets(toy_layout, 4)) == len(toy_layout)
    # tiny_cpu.yaml's 0.25 MiB = 65536 float32:
    #   [embed 36352 + l0 q,k,v,o,gate,up 28672 = 65024] (+ l0.down would be 73216)
    #   [l0.down 8192 + l0 norms 128 + layer 1 (36864 + 128) + final norm 64 = 45376]
    buckets = plan_buckets(toy_layout, int(0.25 * 2**20))
    assert [(len(b.slots), b.numel) for b in buckets] == [(7, 65024), (13, 45376)]


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

"""Bucket planning, bit-exact packing and fingerprints (selfsteer.sync.buckets)."""

from __future__ import annotations

import pytest
import torch

from selfsteer.sync.buckets import (Bucket, FlatBuffers, TensorSlot, fingerprint, fused_unit, pack_bucket, plan_buckets,
                                    unpack_bucket)

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


def test_fused_parts_share_a_bucket():
    # vLLM loads q/k/v (and gate/up) as one layer: a bucket boundary never falls between them.
    # 40 B = ten float32: the attention unit q 4 + k 2 + v 2 = 8 elements (32 B).
    a = "model.layers.0.self_attn."
    layout = [("norm", (3,), F32),                     # 12 B; + the q/k/v unit's 32 B = 44 > 40: new bucket
              (a + "q_proj.weight", (4,), F32), (a + "k_proj.weight", (2,), F32), (a + "v_proj.weight", (2,), F32),
              (a + "o_proj.weight", (4,), F32),        # 32 + 16 > 40: new bucket
              ("model.layers.0.mlp.gate_proj.weight", (6,), F32),
              ("model.layers.0.mlp.up_proj.weight", (6,), F32),  # gate + up = 48 B > 40: one oversized bucket
              ("model.layers.0.mlp.down_proj.weight", (1,), F32)]
    buckets = plan_buckets(layout, 40)
    assert [_names(b) for b in buckets] == [["norm"], [n for n, _, _ in layout[1:4]], [layout[4][0]],
                                            [layout[5][0], layout[6][0]], [layout[7][0]]]
    # Without the rule the first bucket would have taken norm + q (28 B) and split q from k and v.
    assert [s.offset for s in buckets[1].slots] == [0, 4, 6] and buckets[3].numel == 12
    assert fused_unit(a + "k_proj.bias") == a + "qkv_proj.bias"
    assert fused_unit("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.gate_up_proj.weight"
    assert fused_unit(a + "o_proj.weight") is None and fused_unit("q_proj") is None
    # Parts of different layers (or dtypes) are different units.
    other = [(a + "v_proj.weight", (4,), F32), ("model.layers.1.self_attn.q_proj.weight", (4,), F32)]
    assert [_names(b) for b in plan_buckets(other, 16)] == [[other[0][0]], [other[1][0]]]


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
    # A bucket of 8192 float32 (one MLP matrix, 32 KiB), in named_parameters order q,k,v,o,gate,up,down,ln1,ln2;
    # q/k/v (8192) and gate/up (16384) are one unit each (vLLM fuses them):
    #   [embed: 36352 > 8192, alone]
    #   layer 0: [q + k + v = 8192] [o] [gate + up = 16384, alone] [down]             -> 4
    #   [l0.ln1 + l0.ln2 = 128] (+ l1's q/k/v would be 8320) [l1 q+k+v] [o] [gate+up] [down] -> 5
    #   [l1.ln1 + l1.ln2 + norm]                                                      -> 1
    buckets = plan_buckets(toy_layout, 8192 * 4)
    assert len(buckets) == 11
    assert [len(b.slots) for b in buckets] == [1, 3, 1, 2, 1, 2, 3, 1, 2, 1, 3]
    assert _names(buckets[-1]) == ["model.layers.1.input_layernorm.weight",
                                   "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"]
    # Everything in one bucket when it fits.
    total_bytes = 4 * sum(torch.Size(s).numel() for s in numel.values())
    assert len(plan_buckets(toy_layout, total_bytes)) == 1
    assert len(plan_buckets(toy_layout, total_bytes - 1)) == 2
    # One bucket per tensor or fused layer when nothing pairs up: 20 tensors, 2 x (q/k/v and gate/up) 6 fewer.
    assert len(plan_buckets(toy_layout, 4)) == len(toy_layout) - 2 * (2 + 1)
    # tiny_cpu.yaml's 0.25 MiB = 65536 float32:
    #   [embed 36352 + l0 q,k,v,o,gate,up 28672 = 65024] (+ l0.down would be 73216)
    #   [l0.down 8192 + l0 norms 128 + layer 1 (36864 + 128) + final norm 64 = 45376]
    buckets = plan_buckets(toy_layout, int(0.25 * 2**20))
    assert [(len(b.slots), b.numel) for b in buckets] == [(7, 65024), (13, 45376)]

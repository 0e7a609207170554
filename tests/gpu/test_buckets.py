"""Weight-sync buckets packed and unpacked on the GPU: bit-exact, same fingerprint as on CPU; timed."""

from __future__ import annotations

import time

import pytest
import torch

from selfsteer.sync.buckets import FlatBuffers, copy_named, fingerprint, pack_bucket, plan_buckets, unpack_bucket

pytestmark = pytest.mark.gpu


def test_model_buckets_round_trip_on_gpu(toy_model_path):
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(toy_model_path, dtype=torch.bfloat16).cuda()
    target = AutoModelForCausalLM.from_config(source.config, dtype=torch.bfloat16).cuda()
    params = {n: p.detach() for n, p in source.named_parameters()}
    buckets = plan_buckets([(n, tuple(p.shape), p.dtype) for n, p in params.items()], bucket_bytes=64 * 1024)
    assert len(buckets) > 1
    buffers = FlatBuffers()
    for i, bucket in enumerate(buckets):
        flat = pack_bucket(bucket, params, "cuda", buffers.get(bucket, "cuda", slot=i % 2))
        assert flat.is_cuda
        on_cpu = pack_bucket(bucket, {n: t.cpu() for n, t in params.items()}, "cpu")
        assert fingerprint(flat) == fingerprint(on_cpu)
        with torch.no_grad():
            copy_named(target, unpack_bucket(bucket, flat), "target")
    for name, p in target.named_parameters():
        assert torch.equal(p, params[name]), name


def test_large_bucket_pack_unpack_bandwidth():
    torch.manual_seed(0)
    tensors = {f"layer{i}.weight": torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda") for i in range(8)}
    (bucket,) = plan_buckets([(n, tuple(t.shape), t.dtype) for n, t in tensors.items()], bucket_bytes=256 * 2**20)
    buffers = FlatBuffers()
    flat = pack_bucket(bucket, tensors, "cuda", buffers.get(bucket, "cuda"))  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        flat = pack_bucket(bucket, tensors, "cuda", buffers.get(bucket, "cuda"))
        out = {n: t.clone() for n, t in unpack_bucket(bucket, flat)}
    torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) / 10
    size = bucket.numel * 2
    print(f"\n[gpu timing] pack + unpack of a {size / 2**20:.0f} MiB bf16 bucket: {1000 * elapsed:.2f} ms "
          f"({2 * size / elapsed / 1e9:.0f} GB/s copied)")
    assert all(torch.equal(out[n], t) for n, t in tensors.items())

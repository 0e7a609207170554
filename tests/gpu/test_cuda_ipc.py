"""CUDA IPC weight transport (colocated layout): another process maps a trainer rank's bounded slot
pool by handle and loads every bucket bit for bit (same fingerprints), with no host copy, while the
trainer refills a slot only after the engine acknowledged it. Not run where there is no CUDA."""

from __future__ import annotations

import pytest
import torch

from selfsteer.sync.buckets import fingerprint, plan_buckets

pytestmark = pytest.mark.gpu


def _receiver(handle, buckets, queue):
    from selfsteer.sync.cuda_ipc import receive_ipc

    targets = [torch.empty(b.numel, dtype=b.torch_dtype, device="cuda") for b in buckets]
    receive_ipc(handle, buckets, None, targets, version=1, timeout_s=120)
    queue.put([t.cpu() for t in targets])


def test_ipc_pool_streams_every_bucket_bit_exact_through_two_slots():
    import torch.multiprocessing as mp

    from selfsteer.sync.cuda_ipc import IpcPool
    from selfsteer.sync.shm import POOL_SLOTS

    g = torch.Generator().manual_seed(0)
    tensors = {f"w{i}": torch.randn(64, 33, generator=g).to(torch.bfloat16).cuda() for i in range(7)}
    buckets = plan_buckets([(n, tuple(t.shape), t.dtype) for n, t in tensors.items()], bucket_bytes=10_000)
    assert len(buckets) > POOL_SLOTS
    pool = IpcPool(buckets, "cuda")
    pool.writer.begin(1, timeout_s=120)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_receiver, args=(pool.handle(), buckets, queue))
    proc.start()
    sent = [fingerprint(pool.writer.write(i, tensors)) for i in range(len(buckets))]
    flats = queue.get(timeout=180)
    proc.join(60)
    assert proc.exitcode == 0
    assert [fingerprint(f) for f in flats] == sent
    assert pool.writer.peak_live <= POOL_SLOTS and pool.writer.pool_bytes < sum(b.nbytes for b in buckets)
    before = torch.cuda.memory_reserved()
    pool.release()
    assert torch.cuda.memory_reserved() <= before

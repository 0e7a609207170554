"""CUDA IPC weight transport (colocated layout): another process maps trainer buckets by handle and
loads them bit for bit (same fingerprints), with no host copy. Not run where there is no CUDA."""

from __future__ import annotations

import pytest
import torch

from selfsteer.sync.buckets import fingerprint, plan_buckets

pytestmark = pytest.mark.gpu


def _receiver(handles, buckets, queue):
    from selfsteer.sync.cuda_ipc import receive_ipc

    targets = [torch.empty(b.numel, dtype=b.torch_dtype, device="cuda") for b in buckets]
    fps = receive_ipc(handles, buckets, None, True, targets)
    queue.put((fps, [t.cpu() for t in targets]))


def test_ipc_buckets_load_bit_exact_in_another_process():
    import torch.multiprocessing as mp

    from selfsteer.sync.cuda_ipc import IpcBuckets

    g = torch.Generator().manual_seed(0)
    tensors = {f"w{i}": torch.randn(64, 33, generator=g).to(torch.bfloat16).cuda() for i in range(5)}
    buckets = plan_buckets([(n, tuple(t.shape), t.dtype) for n, t in tensors.items()], bucket_bytes=10_000)
    shared = IpcBuckets()
    pairs = [shared.share(b, tensors, "cuda") for b in buckets]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_receiver, args=([h for _, h in pairs], buckets, queue))
    proc.start()
    fps, flats = queue.get(timeout=120)
    proc.join(60)
    assert proc.exitcode == 0
    assert fps == [fingerprint(f) for f, _ in pairs]
    assert all(torch.equal(a, f.cpu()) for a, (f, _) in zip(flats, pairs))
    shared.release()

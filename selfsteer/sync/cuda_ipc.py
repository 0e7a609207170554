"""The CUDA IPC transport (colocated layout, GPU): engines map trainer rank 0's bucket tensors.

Trainer rank 0 packs each bucket into a CUDA tensor it keeps alive until every engine has loaded
it, and hands out IPC handles (`torch.multiprocessing.reductions.reduce_tensor`); an engine on
the same GPU rebuilds each handle into a tensor over the same device memory and copies it into
its weights: one device-to-device copy, no host memory. Needs both processes to see the GPU under
the same index (one fractional bundle per GPU: CUDA_VISIBLE_DEVICES is that one GPU for both).
"""

from __future__ import annotations

import torch

from selfsteer.sync.buckets import Bucket, fingerprint, load_view, pack_bucket


class IpcBuckets:
    """Rank 0's side: packed CUDA buckets and their IPC handles, held until `release()`."""

    def __init__(self):
        self.flats: list[torch.Tensor] = []

    def share(self, bucket: Bucket, tensors: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, tuple]:
        from torch.multiprocessing.reductions import reduce_tensor

        flat = pack_bucket(bucket, tensors, device)
        self.flats.append(flat)
        return flat, reduce_tensor(flat)

    def release(self) -> None:
        """After every engine loaded: drop the buckets (the caching allocator reuses their blocks)."""
        self.flats = []
        torch.cuda.ipc_collect()


def open_handle(handle: tuple, device_index: int | None = None) -> torch.Tensor:
    """A tensor over the trainer's bucket memory; `device_index` remaps the device when the engine
    sees the GPU under another index than the trainer did."""
    rebuild, args = handle
    args = list(args)
    if device_index is not None:
        args[6] = device_index  # rebuild_cuda_tensor's storage_device
    return rebuild(*args)


def receive_ipc(handles: list[tuple], buckets: list[Bucket], load, verify: bool, targets=None) -> list[str]:
    """Load every bucket straight from the trainer's device memory (as `receive_shm`, on CUDA)."""
    fingerprints = []
    for i, (bucket, handle) in enumerate(zip(buckets, handles)):
        view = open_handle(handle, torch.cuda.current_device())
        held = load_view(i, bucket, view, load, targets)
        if verify:
            fingerprints.append(fingerprint(held))
        del view
    torch.cuda.synchronize()
    return fingerprints

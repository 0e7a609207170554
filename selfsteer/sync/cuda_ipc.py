"""The CUDA IPC transport (colocated layout, GPU): engines map a trainer rank's bounded bucket pool.

Each trainer rank allocates `POOL_SLOTS` CUDA slots (each the size of the largest bucket) and hands
out their IPC handles (`torch.multiprocessing.reductions.reduce_tensor`) once per sync; the engine on
the same GPU rebuilds the handles into tensors over the same device memory. The slots cycle as in
the shm transport, whose header (a small /dev/shm file) carries the same protocol: the trainer packs
bucket i into slot i % POOL_SLOTS once the engine acknowledged bucket i - POOL_SLOTS, the engine
copies it into its weights (one device-to-device copy, no host memory) and acknowledges. So a sync
holds POOL_SLOTS buckets on the trainer's GPU, never the whole model (issue 23; verl's bucketed IPC
update reuses its bucket the same way). After the sync the trainer drops the pool and returns the
blocks (`release()`: `ipc_collect`, `empty_cache`), so training gets them back.

The device index comes from Ray's accelerator ids (`selfsteer.utils.runtime.ray_device_index`), so
RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES (every GPU visible) maps the right GPU.
"""

from __future__ import annotations

import torch

from selfsteer.sync.buckets import Bucket
from selfsteer.sync.shm import POOL_SLOTS, ShmReader, ShmWriter, pool_layout, receive_pool


class IpcPool:
    """A trainer rank's side: `POOL_SLOTS` CUDA slots shared by IPC, cycled through `ShmWriter`."""

    def __init__(self, buckets: list[Bucket], device, tag: str = "selfsteer-ipc", readers: int = 1,
                 slots: int = POOL_SLOTS):
        from torch.multiprocessing.reductions import reduce_tensor

        _, slot_bytes, n = pool_layout(list(buckets), readers, slots)
        tensors = [torch.empty(slot_bytes, dtype=torch.uint8, device=device) for _ in range(n)]
        self.writer = ShmWriter(buckets, tag=tag, readers=readers, slot_tensors=tensors)
        self.handles = [reduce_tensor(t) for t in tensors]

    def handle(self) -> dict:
        return {**self.writer.handle(), "ipc": self.handles}

    def release(self) -> None:
        """After every engine loaded: drop the slots and the header, and return the blocks to the driver."""
        self.writer.close()
        self.handles = []
        torch.cuda.synchronize()
        torch.cuda.ipc_collect()
        torch.cuda.empty_cache()


def open_handle(handle: tuple, device_index: int | None = None) -> torch.Tensor:
    """A tensor over the trainer's slot memory; `device_index` remaps the device when the engine
    sees the GPU under another index than the trainer did."""
    rebuild, args = handle
    args = list(args)
    if device_index is not None:
        args[6] = device_index  # rebuild_cuda_tensor's storage_device
    return rebuild(*args)


def receive_ipc(handle: dict, buckets: list[Bucket], load, targets=None, version=None, timeout_s: float = 600.0,
                device_index: int | None = None) -> None:
    """Load every bucket straight from the trainer's device memory (as `receive_shm`, on CUDA)."""
    index = torch.cuda.current_device() if device_index is None else device_index
    slots = [open_handle(h, index) for h in handle["ipc"]]
    reader = ShmReader(handle, buckets, slot_tensors=slots)
    try:
        receive_pool(reader, buckets, load, targets, version, timeout_s,
                     before_done=lambda: torch.cuda.synchronize(index))
    finally:
        reader.close()
        del slots
        torch.cuda.ipc_collect()

"""The shared-memory transport (colocated layout, CPU): one /dev/shm segment holds every bucket.

Trainer rank 0 packs its flat buckets straight into the segment (`ShmWriter`); an engine on the
same node maps it (`ShmReader`) and loads each bucket from a view of the mapping, so the bytes
are copied twice in all (pack, load): the two-copy limit a collective on one host cannot beat.
The writer owns the file: `close()` (or the writer's exit) unlinks it, whatever its readers do;
a reader that dies only drops its mapping.
"""

from __future__ import annotations

import os
import uuid
import weakref
from pathlib import Path
from typing import Iterator

import torch

from selfsteer.sync.buckets import Bucket, fingerprint, pack_bucket

SHM_DIR = Path(os.environ.get("SELFSTEER_SHM_DIR", "/dev/shm"))
_ALIGN = 64  # bytes: every bucket starts on a cache line


def bucket_offsets(buckets: list[Bucket]) -> tuple[list[int], int]:
    """Byte offset of each bucket in the segment, and the segment's size."""
    offsets, at = [], 0
    for b in buckets:
        offsets.append(at)
        at += -(-b.nbytes // _ALIGN) * _ALIGN
    return offsets, max(at, _ALIGN)


def _views(raw: torch.Tensor, buckets: list[Bucket]) -> list[torch.Tensor]:
    offsets, _ = bucket_offsets(buckets)
    return [raw[o:o + b.nbytes].view(b.torch_dtype) for o, b in zip(offsets, buckets)]


def _map(path: Path, nbytes: int) -> torch.Tensor:
    """The file mapped shared (MAP_SHARED): writes are seen by every process that maps it."""
    return torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class ShmWriter:
    """Trainer rank 0's side: a segment sized for `buckets`, kept warm across syncs."""

    def __init__(self, buckets: list[Bucket], tag: str = "selfsteer"):
        self.buckets = list(buckets)
        _, self.nbytes = bucket_offsets(self.buckets)
        self.path = SHM_DIR / f"{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}.weights"
        with open(self.path, "wb") as f:
            f.truncate(self.nbytes)
        # Unlinked at close, at garbage collection or at interpreter exit, whichever comes first.
        self._finalizer = weakref.finalize(self, _unlink, str(self.path))
        self.views = _views(_map(self.path, self.nbytes), self.buckets)

    def write(self, i: int, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pack bucket i into its place in the segment; returns that view."""
        return pack_bucket(self.buckets[i], tensors, "cpu", out=self.views[i])

    def handle(self) -> dict:
        """What a reader needs to map the segment (a small picklable dict)."""
        return {"path": str(self.path), "nbytes": self.nbytes}

    def close(self) -> None:
        self.views = []
        self._finalizer()


class ShmReader:
    """An engine's side: maps a writer's segment; the bucket views read the writer's bytes in place."""

    def __init__(self, handle: dict, buckets: list[Bucket]):
        path = Path(handle["path"])
        if not path.is_file():
            raise FileNotFoundError(f"weight segment {path} is gone (the trainer closed it or the engine runs on "
                                    f"another node: placement=colocated needs engines beside trainer rank 0)")
        self.buckets, self.views = list(buckets), _views(_map(path, int(handle["nbytes"])), list(buckets))

    def __iter__(self) -> Iterator[tuple[Bucket, torch.Tensor]]:
        return iter(zip(self.buckets, self.views))

    def close(self) -> None:
        self.views = []


def receive_shm(handle: dict, buckets: list[Bucket], load, verify: bool, targets=None) -> list[str]:
    """Load every bucket from the segment: `load(bucket, view)` or, where the engine's parameters live
    in flat bucket tensors (`targets`), one copy into each. Fingerprints of what the engine now holds."""
    reader = ShmReader(handle, buckets)
    try:
        fingerprints = []
        for i, (bucket, view) in enumerate(reader):
            held = view
            if targets is not None:
                targets[i].copy_(view)
                held = targets[i]
            else:
                load(bucket, view)
            if verify:
                fingerprints.append(fingerprint(held))
        return fingerprints
    finally:
        reader.close()

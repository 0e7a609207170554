"""The shared-memory transport (colocated layout, CPU): one /dev/shm segment holds every bucket.

Trainer rank 0 packs its flat buckets straight into the segment (`ShmWriter`); an engine on the
same node maps it (`ShmReader`) and loads each bucket from a view of the mapping, so the bytes
are copied twice in all (pack, load): the two-copy limit a collective on one host cannot beat.
The writer owns the file: `close()` (or the writer's exit) unlinks it, whatever its readers do;
a reader that dies only drops its mapping.

Writer and readers may run at once: a 64-byte header holds (sync version, buckets written), so a
reader loads bucket i as soon as it is written while the writer packs bucket i+1. Stores reach
the header after the bucket's bytes (program order; x86 keeps stores in order).
"""

from __future__ import annotations

import os
import time
import uuid
import weakref
from pathlib import Path
from typing import Iterator

import torch

from selfsteer.sync.buckets import Bucket, fingerprint, load_view, pack_bucket

SHM_DIR = Path(os.environ.get("SELFSTEER_SHM_DIR", "/dev/shm"))
_ALIGN = 64  # bytes: every bucket starts on a cache line; the header takes the first line


def bucket_offsets(buckets: list[Bucket]) -> tuple[list[int], int]:
    """Byte offset of each bucket in the segment (after the header), and the segment's size."""
    offsets, at = [], _ALIGN
    for b in buckets:
        offsets.append(at)
        at += -(-b.nbytes // _ALIGN) * _ALIGN
    return offsets, max(at, _ALIGN)


def _header(raw: torch.Tensor) -> torch.Tensor:
    return raw[:16].view(torch.int64)  # [sync version, buckets written]


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
        raw = _map(self.path, self.nbytes)
        self.header, self.views = _header(raw), _views(raw, self.buckets)

    def begin(self, version: int) -> None:
        """Start sync `version`: readers waiting for it see no bucket written yet."""
        self.header[1] = 0
        self.header[0] = version

    def write(self, i: int, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pack bucket i into its place in the segment and publish it; returns that view."""
        flat = pack_bucket(self.buckets[i], tensors, "cpu", out=self.views[i])
        self.header[1] = i + 1
        return flat

    def handle(self) -> dict:
        """What a reader needs to map the segment (a small picklable dict)."""
        return {"path": str(self.path), "nbytes": self.nbytes}

    def close(self) -> None:
        self.views, self.header = [], None
        self._finalizer()


class ShmReader:
    """An engine's side: maps a writer's segment; the bucket views read the writer's bytes in place."""

    def __init__(self, handle: dict, buckets: list[Bucket]):
        path = Path(handle["path"])
        if not path.is_file():
            raise FileNotFoundError(f"weight segment {path} is gone (the trainer closed it or the engine runs on "
                                    f"another node: placement=colocated needs engines beside trainer rank 0)")
        raw = _map(path, int(handle["nbytes"]))
        self.buckets, self.header, self.views = list(buckets), _header(raw), _views(raw, list(buckets))

    def wait(self, version: int, i: int, timeout_s: float) -> None:
        """Until the writer has published bucket i of sync `version`."""
        deadline, pause = time.monotonic() + timeout_s, 1e-5
        while not (int(self.header[0]) == version and int(self.header[1]) > i):
            if time.monotonic() > deadline:
                raise TimeoutError(f"trainer rank 0 did not write bucket {i} of weight sync {version} into "
                                   f"the shared segment within sync.timeout_s={timeout_s} s")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

    def __iter__(self) -> Iterator[tuple[Bucket, torch.Tensor]]:
        return iter(zip(self.buckets, self.views))

    def close(self) -> None:
        self.views, self.header = [], None


def receive_shm(handle: dict, buckets: list[Bucket], load, verify: bool, targets=None, version=None,
                timeout_s: float = 600.0) -> list[str]:
    """Load every bucket from the segment: `load(bucket, view)` or, where the engine's parameters live
    in flat bucket tensors (`targets`), one copy into each. Fingerprints of what the engine now holds.
    With `version`, each bucket is loaded once the writer has published it in that sync."""
    reader = _cached_reader(handle, buckets)
    # The mapping stays open for the next sync: a fresh one would fault in every page again.
    fingerprints = []
    for i, (bucket, view) in enumerate(reader):
        if version is not None:
            reader.wait(version, i, timeout_s)
        held = load_view(i, bucket, view, load, targets)
        if verify:
            fingerprints.append(fingerprint(held))
    return fingerprints


_READER: dict = {}  # this process's mapping of the latest segment (one writer per run)


def _cached_reader(handle: dict, buckets: list[Bucket]) -> ShmReader:
    """The reader of `handle`'s segment, kept mapped across syncs; a new segment replaces it (and
    unmaps the old one, whose memory the writer's unlink then frees)."""
    key = (handle["path"], int(handle["nbytes"]), tuple(buckets))
    if _READER.get("key") != key or not os.path.exists(handle["path"]):
        old = _READER.pop("reader", None)
        if old is not None:
            old.close()
        _READER.update(key=key, reader=ShmReader(handle, buckets))
    return _READER["reader"]


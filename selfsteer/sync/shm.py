"""The shared-memory transport (colocated layout, CPU): one /dev/shm segment holds every bucket.

Trainer rank 0 packs its flat buckets straight into the segment (`ShmWriter`); an engine on the
same node maps it (`ShmReader`) and loads each bucket from a view of the mapping, so the bytes
are copied twice in all (pack, load): the two-copy limit a collective on one host cannot beat.
The writer owns the file: `close()` (or the writer's exit) unlinks it, whatever its readers do;
a reader that dies only drops its mapping. A writer killed by SIGKILL cannot unlink it, so the
file's name says who owns it (pid namespace, pid, process start time) and `remove_stale_segments`,
called at every run's start and before a new segment is made, removes those of dead owners.

Writer and readers may run at once: a 64-byte header holds (sync version, buckets written), so a
reader loads bucket i as soon as it is written while the writer packs bucket i+1. Stores reach
the header after the bucket's bytes (program order; x86 keeps stores in order).
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
import weakref
from pathlib import Path
from typing import Iterator

import torch

from selfsteer.sync.buckets import Bucket, fingerprint, load_view, pack_bucket

logger = logging.getLogger(__name__)

SHM_DIR = Path(os.environ.get("SELFSTEER_SHM_DIR", "/dev/shm"))
_ALIGN = 64  # bytes: every bucket starts on a cache line; the header takes the first line
# <tag>-ns<pid namespace>-pid<pid>-start<start time, 1/100 s>-<random>.weights; the tag starts "selfsteer".
_OWNED = re.compile(r"^selfsteer.*-ns(?P<ns>\d+)-pid(?P<pid>\d+)-start(?P<start>\d+)-[0-9a-f]{8}\.weights$")
_OLD_STYLE = re.compile(r"^selfsteer-trainer\d+-(?P<pid>\d+)-[0-9a-f]{8}\.weights$")  # before owners were named


def _pid_namespace() -> int:
    """This process's pid namespace (pids of other namespaces, e.g. another container sharing
    /dev/shm, say nothing about liveness here); 0 where /proc has no answer."""
    try:
        return int(re.sub(r"\D", "", os.readlink("/proc/self/ns/pid")) or 0)
    except OSError:
        return 0


def _start_time(pid: int):
    import psutil

    try:
        return int(round(psutil.Process(pid).create_time() * 100))
    except psutil.Error:
        return None  # no such process (or not ours to see)


def segment_name(tag: str) -> str:
    """A segment's file name naming its owner (this process) so a later run can tell it is stale."""
    pid = os.getpid()
    return f"{tag}-ns{_pid_namespace()}-pid{pid}-start{_start_time(pid) or 0}-{uuid.uuid4().hex[:8]}.weights"


def remove_stale_segments(directory: Path | None = None) -> list[Path]:
    """Remove weight segments whose owner is gone (killed before it could unlink them); a live
    owner's segment, one from another pid namespace and any other file are kept. Returns the removed."""
    directory = SHM_DIR if directory is None else Path(directory)
    removed, ns = [], _pid_namespace()
    try:
        candidates = sorted(directory.glob("selfsteer*.weights"))
    except OSError:
        return removed
    for path in candidates:
        owned, old = _OWNED.match(path.name), _OLD_STYLE.match(path.name)
        if owned:
            if int(owned["ns"]) != ns:
                continue
            start = _start_time(int(owned["pid"]))  # a reused pid has a later start time
            alive = start is not None and int(owned["start"]) in (0, start)  # 0: its start was unknown
        elif old:
            alive = _start_time(int(old["pid"])) is not None
        else:
            continue
        if alive:
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:  # gone already, or not ours to remove
            continue
        removed.append(path)
        logger.warning("removed stale weight segment %s (%.1f MiB): its owner, pid %s, is gone",
                       path, size / 2 ** 20, (owned or old)["pid"])
    return removed


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
        remove_stale_segments()  # a killed run's segment would hold the weights' size of memory
        self.path = SHM_DIR / segment_name(tag)
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


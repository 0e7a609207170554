"""The shared-memory transport (colocated layout, CPU): a bounded pool of bucket slots in /dev/shm.

Trainer rank 0 packs its flat buckets straight into the segment (`ShmWriter`); an engine on the
same node maps it (`ShmReader`) and loads each bucket from a view of the mapping, so the bytes
are copied twice in all (pack, load): the two-copy limit a collective on one host cannot beat.
The segment holds `POOL_SLOTS` slots, not the whole model: bucket i goes into slot i % POOL_SLOTS
once every engine has loaded bucket i - POOL_SLOTS (each engine acknowledges each bucket in the
header), so at most POOL_SLOTS buckets are ever live, each slot the size of the largest bucket
(`sync.bucket_mb`, or one tensor larger than that). verl reuses one IPC bucket the same way
(the worker reports each bucket loaded before the trainer refills it); the CUDA IPC transport
(`sync.cuda_ipc`) uses this header with CUDA slots.
The writer owns the file: `close()` (or the writer's exit) unlinks it, whatever its readers do;
a reader that dies only drops its mapping. A writer killed by SIGKILL cannot unlink it, so the
file's name says who owns it (pid namespace, pid, process start time) and `remove_stale_segments`,
called at every run's start and before a new segment is made, removes those of dead owners.

Writer and readers run at once: the header holds (sync version, buckets written, buckets loaded by
each reader), so a reader loads bucket i as soon as it is written while the writer packs bucket
i+1, and the writer refills a slot only when every reader is done with it. Stores reach the header
after the bucket's bytes (program order; x86 keeps stores in order).
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
import weakref
from pathlib import Path

import torch

from selfsteer.sync.buckets import Bucket, load_view, pack_bucket

logger = logging.getLogger(__name__)

SHM_DIR = Path(os.environ.get("SELFSTEER_SHM_DIR", "/dev/shm"))
_ALIGN = 64  # bytes: every slot starts on a cache line; the header takes the first line(s)
POOL_SLOTS = 2  # live buckets at most: one being packed while the engines load the other
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


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def pool_layout(buckets: list[Bucket], readers: int, slots: int = POOL_SLOTS) -> tuple[int, int, int]:
    """(header bytes, bytes per slot, slots): each slot holds the largest bucket; no more slots than buckets."""
    slot_bytes = _aligned(max((b.nbytes for b in buckets), default=0))
    return _aligned(8 * (2 + max(readers, 1))), slot_bytes, max(1, min(slots, len(buckets)))


def _header(raw: torch.Tensor, header_bytes: int) -> torch.Tensor:
    return raw[:header_bytes].view(torch.int64)  # [sync version, buckets written, loaded by reader 0, 1, ...]


def _slot_view(slot: torch.Tensor, bucket: Bucket) -> torch.Tensor:
    return slot[:bucket.nbytes].view(bucket.torch_dtype)


def _map(path: Path, nbytes: int) -> torch.Tensor:
    """The file mapped shared (MAP_SHARED): writes are seen by every process that maps it."""
    return torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _poll(done, deadline: float, error) -> None:
    pause = 1e-5
    while not done():
        if time.monotonic() > deadline:
            raise error()
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)


class ShmWriter:
    """Trainer rank 0's side: a bounded pool of bucket slots for `readers` engines, kept warm across
    syncs. With `slot_tensors` (CUDA tensors shared by IPC) the segment holds only the header."""

    def __init__(self, buckets: list[Bucket], tag: str = "selfsteer", readers: int = 1, slots: int = POOL_SLOTS,
                 slot_tensors: list[torch.Tensor] | None = None):
        self.buckets, self.readers = list(buckets), readers
        self.header_bytes, self.slot_bytes, self.slots = pool_layout(self.buckets, readers, slots)
        if slot_tensors is not None:
            self.slots = len(slot_tensors)
        self.nbytes = self.header_bytes + (0 if slot_tensors is not None else self.slots * self.slot_bytes)
        remove_stale_segments()  # a killed run's segment would hold the pool's size of memory
        self.path = SHM_DIR / segment_name(tag)
        with open(self.path, "wb") as f:
            f.truncate(self.nbytes)
        # Unlinked at close, at garbage collection or at interpreter exit, whichever comes first.
        self._finalizer = weakref.finalize(self, _unlink, str(self.path))
        raw = _map(self.path, self.nbytes)
        self.header = _header(raw, self.header_bytes)
        self.slot_tensors = slot_tensors if slot_tensors is not None else [
            raw[self.header_bytes + k * self.slot_bytes:self.header_bytes + (k + 1) * self.slot_bytes]
            for k in range(self.slots)]
        self.version, self.timeout_s, self.peak_live = 0, 600.0, 0

    @property
    def pool_bytes(self) -> int:
        """Bytes the pool's slots take (the bound on what a sync holds besides the model)."""
        return self.slots * self.slot_bytes

    def begin(self, version: int, timeout_s: float = 600.0) -> None:
        """Start sync `version`: readers waiting for it see no bucket written yet, and none loaded."""
        self.header[1:] = 0
        self.header[0] = version
        self.version, self.timeout_s = version, timeout_s

    def loaded(self) -> int:
        """Buckets of this sync every reader has loaded."""
        return int(self.header[2:2 + self.readers].min()) if self.readers else int(self.header[1])

    def live(self) -> int:
        """Buckets written and not yet loaded by every reader (at most `slots`)."""
        return int(self.header[1]) - self.loaded()

    def write(self, i: int, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pack bucket i into slot i % slots once every reader loaded the bucket there, and publish
        it; returns the bucket's view (valid until bucket i + slots is written)."""
        if i >= self.slots:
            _poll(lambda: self.loaded() > i - self.slots, time.monotonic() + self.timeout_s,
                  lambda: TimeoutError(f"rollout engine(s) {self._behind(i - self.slots)} did not load bucket "
                                       f"{i - self.slots} of weight sync {self.version} within sync.timeout_s="
                                       f"{self.timeout_s} s"))
        bucket = self.buckets[i]
        flat = pack_bucket(bucket, tensors, self.slot_tensors[i % self.slots].device,
                           out=_slot_view(self.slot_tensors[i % self.slots], bucket))
        if flat.device.type == "cuda":
            torch.cuda.current_stream(flat.device).synchronize()  # the bytes are there before the header says so
        self.header[1] = i + 1
        self.peak_live = max(self.peak_live, self.live())
        return flat

    def _behind(self, i: int) -> str:
        return ", ".join(str(r) for r in range(self.readers) if int(self.header[2 + r]) <= i)

    def handle(self) -> dict:
        """What a reader needs to map the segment (a small picklable dict); readers add "reader": index."""
        return {"path": str(self.path), "nbytes": self.nbytes, "header_bytes": self.header_bytes,
                "slot_bytes": self.slot_bytes, "slots": self.slots, "readers": self.readers}

    def close(self) -> None:
        self.slot_tensors, self.header = [], None
        self._finalizer()


class ShmReader:
    """An engine's side: maps a writer's segment; bucket views read the writer's slots in place.
    With `slot_tensors` (CUDA slots opened from IPC handles) the segment gives only the header."""

    def __init__(self, handle: dict, buckets: list[Bucket], slot_tensors: list[torch.Tensor] | None = None):
        path = Path(handle["path"])
        if not path.is_file():
            raise FileNotFoundError(f"weight segment {path} is gone (the trainer closed it or the engine runs on "
                                    f"another node: placement=colocated needs engines beside trainer rank 0)")
        raw = _map(path, int(handle["nbytes"]))
        hb, sb, self.slots = int(handle["header_bytes"]), int(handle["slot_bytes"]), int(handle["slots"])
        self.buckets, self.header, self.reader = list(buckets), _header(raw, hb), int(handle.get("reader", 0))
        self.slot_tensors = slot_tensors if slot_tensors is not None else [
            raw[hb + k * sb:hb + (k + 1) * sb] for k in range(self.slots)]

    def view(self, i: int) -> torch.Tensor:
        return _slot_view(self.slot_tensors[i % self.slots], self.buckets[i])

    def wait(self, version: int, i: int, timeout_s: float) -> None:
        """Until the writer has published bucket i of sync `version`."""
        _poll(lambda: int(self.header[0]) == version and int(self.header[1]) > i, time.monotonic() + timeout_s,
              lambda: TimeoutError(f"trainer rank 0 did not write bucket {i} of weight sync {version} into "
                                   f"the shared segment within sync.timeout_s={timeout_s} s"))

    def done(self, i: int) -> None:
        """Bucket i is loaded: its slot may be refilled."""
        self.header[2 + self.reader] = i + 1

    def close(self) -> None:
        self.slot_tensors, self.header = [], None


def receive_pool(reader: ShmReader, buckets: list[Bucket], load, targets=None, version=None,
                 timeout_s: float = 600.0, before_done=None) -> None:
    """Load every bucket from the pool: `load(bucket, view)` or, where the engine's parameters live in
    flat bucket tensors (`targets`), one copy into each; acknowledge each so its slot can be refilled.
    With `version`, each bucket is loaded once the writer has published it in that sync."""
    for i, bucket in enumerate(buckets):
        if version is not None:
            reader.wait(version, i, timeout_s)
        load_view(i, bucket, reader.view(i), load, targets)
        if before_done is not None:
            before_done()  # e.g. the device copy finished before the slot is handed back
        reader.done(i)


def receive_shm(handle: dict, buckets: list[Bucket], load, targets=None, version=None,
                timeout_s: float = 600.0) -> None:
    """`receive_pool` from the CPU segment `handle` (mapped once and kept for the next sync)."""
    receive_pool(_cached_reader(handle, buckets), buckets, load, targets, version, timeout_s)


_READER: dict = {}  # this process's mapping of the latest segment (one writer per run)


def _cached_reader(handle: dict, buckets: list[Bucket]) -> ShmReader:
    """The reader of `handle`'s segment, kept mapped across syncs; a new segment replaces it (and
    unmaps the old one, whose memory the writer's unlink then frees)."""
    key = (handle["path"], int(handle["nbytes"]), int(handle.get("reader", 0)), tuple(buckets))
    if _READER.get("key") != key or not os.path.exists(handle["path"]):
        old = _READER.pop("reader", None)
        if old is not None:
            old.close()
        _READER.update(key=key, reader=ShmReader(handle, buckets))
    return _READER["reader"]

"""Stale extension-build locks (issue #26 item 10).

DeepSpeed builds its CPU ops (e.g. `deepspeed_shm_comm`, the shared-memory all-reduce) through
torch's `cpp_extension.load`, which guards each build directory with a `lock` file
(`torch.utils.file_baton.FileBaton`): created with O_EXCL, held open while building, removed at
the end. A builder killed mid-build (a start-up timeout, kill -9) leaves the file behind, and every
later start waits on it forever, silently. Since the builder keeps the file open while it builds,
a lock that no process on this node holds open is stale: it is removed, and said so.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def extensions_root() -> Path:
    """Where torch builds JIT extensions: TORCH_EXTENSIONS_DIR, else its per-user cache."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def lock_holders(path: Path) -> list[int]:
    """Pids of this node's processes that hold `path` open (the builder keeps its lock's fd)."""
    target, holders = os.path.realpath(path), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == target:
                    holders.append(int(entry.name))
                    break
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return holders


def clear_stale_build_locks(root: Path | None = None) -> list[Path]:
    """Remove build locks under `root` (default: `extensions_root()`) that no process holds;
    log the builder a held one waits for. Returns the locks removed. A no-op without /proc."""
    root = extensions_root() if root is None else Path(root)
    if not Path("/proc/self/fd").is_dir() or not root.is_dir():
        return []
    removed = []
    # <root>/<name>/lock, or <root>/py311_cpu/<name>/lock when TORCH_EXTENSIONS_DIR is unset
    for lock in sorted([*root.glob("*/lock"), *root.glob("*/*/lock")]):
        try:
            seen = _identity(lock)
            holders = lock_holders(lock)
            if holders:
                logger.warning("extension build lock %s is held by pid %s: waiting for that build of %s to finish",
                               lock, ", ".join(map(str, holders)), lock.parent.name)
                continue
            # Another rank may have removed it and a new build taken the name meanwhile: only the
            # very file judged stale is removed.
            if _identity(lock) != seen:
                continue
            age = time.time() - lock.stat().st_mtime
            lock.unlink()
        except FileNotFoundError:  # its builder just finished, or another rank removed it
            continue
        removed.append(lock)
        logger.warning("removed stale extension build lock %s (%.0f s old, no process holds it: a build of %s "
                       "was killed); the extension is rebuilt or reused as needed", lock, age, lock.parent.name)
    return removed


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_ctime_ns


def init_deepspeed_distributed(backend: str, timeout) -> None:
    """deepspeed.init_distributed (which builds DeepSpeed's CPU comm op on CPU) after clearing
    stale build locks, so a killed earlier build cannot hang this start."""
    import deepspeed

    clear_stale_build_locks()
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout)

"""One process's hold on a run directory: an exclusive lock for as long as the driver runs, and
the undo of a start refused after the directory was claimed.

Two starts into one new directory at the same moment both pass the "holds no run" check; the lock
(`flock` on `.selfsteer.lock`, released by the kernel when the driver dies, even by kill -9) lets
exactly one of them go on. `selfsteer scale` reads the same lock to tell a live run from a stopped one.
A start refused after the claim (cluster too small, too few toy prompts) leaves the directory as it
found it: what the start created goes, and a run moved aside by --overwrite comes back.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

LOCK_FILE = ".selfsteer.lock"


class RunDirBusy(RuntimeError):
    """Another selfsteer process holds the run directory's lock."""


def _try_lock(path: Path) -> Optional[int]:
    """An fd holding an exclusive lock on `path` (created if missing), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_locked(run_dir: Path) -> bool:
    """Whether a live selfsteer driver holds `run_dir` (no lock file: nobody does; the file is not created)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class RunDirClaim:
    """The lock on `run_dir` and what this start must undo if it is refused before its first round."""

    def __init__(self, run_dir: Path, fd: int, created: bool, existing: set[str], aside: Optional[Path]):
        self.run_dir, self._fd, self.created, self._existing, self.aside = run_dir, fd, created, existing, aside

    @classmethod
    def acquire(cls, run_dir: Path, aside: Optional[Path] = None) -> RunDirClaim:
        """Create `run_dir` if needed and lock it; `aside` is where --overwrite moved an old run.

        Raises:
            RunDirBusy: another process holds the lock (a run is going or starting there).
        """
        try:
            run_dir.mkdir(parents=True)
            created = True
        except FileExistsError:
            created = False
        existing = set(os.listdir(run_dir))
        fd = _try_lock(run_dir / LOCK_FILE)
        if fd is None or os.fstat(fd).st_ino != _inode(run_dir / LOCK_FILE):
            # Held, or the winner refused its start and removed the directory under us.
            if fd is not None:
                os.close(fd)
            raise RunDirBusy(f"another run is starting in {run_dir} (or running there: another selfsteer "
                             f"process holds {run_dir / LOCK_FILE}); wait for it or choose another output_dir")
        return cls(run_dir, fd, created, existing, aside)

    def undo(self) -> None:
        """A refused start: remove what it wrote into the directory, and put an overwritten run back."""
        if self.created:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:
            for name in set(os.listdir(self.run_dir)) - self._existing:
                path = self.run_dir / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        if self.aside is not None and not self.run_dir.exists():
            self.aside.rename(self.run_dir)
            logger.warning("start refused: moved the old run back from %s to %s", self.aside, self.run_dir)
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return -1

"""Find and kill an actor's whole process tree, including children orphaned by its death.

A vLLM engine on CUDA runs its engine core (and, with tensor parallelism, one worker per GPU) as
child processes of the Ray actor. When the actor is killed (kill -9, OOM, `ray.kill`) those
children are re-parented, keep running and keep ~90% of their GPU's memory, so the engine that
Ray restarts on the same GPU fails to allocate. The actor tags its process with an environment
variable holding its (restart-stable) Ray actor id before it starts any child; children inherit
it, so the next incarnation, or the pool before it kills an engine, can find every process of the
tree by its environment even after the parent is gone, and kill exactly those (Linux /proc).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

logger = logging.getLogger(__name__)

TAG_ENV = "SELFSTEER_PROCESS_TREE"


def tag_process_tree(tag: str) -> None:
    """Tag this process; children started after this inherit the tag."""
    os.environ[TAG_ENV] = tag


def tagged_pids(tag: str, proc: Path = Path("/proc")) -> list[int]:
    """Processes (not this one) whose environment holds TAG_ENV=tag; [] where /proc is absent."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's process
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def kill_tree(tag: str, timeout_s: float = 30.0) -> list[int]:
    """SIGKILL every other process tagged `tag` and wait until each has exited; returns their pids.

    A process that is gone or a zombie has released its memory (GPU memory included)."""
    pids = tagged_pids(tag)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _running(p)]
    if alive:
        logger.warning("processes %s (tag %s) still running %.0f s after SIGKILL", alive, tag, timeout_s)
    if pids:
        logger.warning("killed %d leftover process(es) of %s: %s", len(pids), tag, pids)
    return pids


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")

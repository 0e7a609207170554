"""Ends an in-process Ray's processes when the driver dies, even by `kill -9`.

Ray's own fate-sharing stops the GCS, raylet and workers with the driver, but its dashboard and
runtime-env agents first try to report the raylet's death to the (dead) GCS and linger about a
minute, listening. The reaper, started in its own session, snapshots the driver's process tree
every `interval` seconds and, once the driver's pipe closes (any exit), kills what is left of it.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time


_STARTED: list = []  # held for the process's life: dropping the pipe would end the reaper's wait


def start(interval: float = 0.5) -> subprocess.Popen:
    """Start the reaper for this process; its stdin pipe closes when this process exits."""
    proc = subprocess.Popen([sys.executable, "-m", "selfsteer.actors.reaper", str(os.getpid()), str(interval)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    _STARTED.append(proc)
    return proc


def _tree(driver):
    import psutil

    try:
        return {(p.pid, p.create_time()): p for p in driver.children(recursive=True) if p.pid != os.getpid()}
    except psutil.Error:
        return {}


def main(driver_pid: int, interval: float) -> None:
    import psutil

    driver = psutil.Process(driver_pid)
    seen: dict = {}
    while True:
        seen.update(_tree(driver))
        ready, _, _ = select.select([sys.stdin], [], [], interval)
        if ready and not os.read(sys.stdin.fileno(), 1024):
            break  # EOF: the driver exited or was killed
    time.sleep(min(interval, 1.0))  # a clean ray.shutdown is given a moment to finish on its own
    for (pid, created), proc in seen.items():
        try:
            if proc.create_time() == created:  # not a reused pid
                proc.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))

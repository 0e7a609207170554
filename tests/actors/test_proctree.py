"""The process-tree kill finds an actor's children by their inherited tag, even once orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from selfsteer.actors import proctree

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")

# A parent that starts a child, which starts a grandchild; each prints its pid and sleeps.
TREE = """
import subprocess, sys, time
depth = int(sys.argv[1])
print(__import__('os').getpid(), flush=True)
if depth:
    subprocess.Popen([sys.executable, '-c', sys.argv[2], str(depth - 1), sys.argv[2]])
time.sleep(600)
"""


def _pids(path, n, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= n:
            return [int(x) for x in lines]
        time.sleep(0.05)
    raise AssertionError(f"tree did not start: {path.read_text() if path.exists() else ''}")


def test_orphaned_children_of_a_killed_parent_are_found_and_killed(tmp_path):
    tag = f"test-{uuid.uuid4().hex}"
    out = tmp_path / "pids"
    with open(out, "w") as fh:
        parent = subprocess.Popen([sys.executable, "-c", TREE, "2", TREE], env={**os.environ, proctree.TAG_ENV: tag},
                                  stdout=fh)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # untagged
    try:
        pids = _pids(out, 3)
        os.kill(parent.pid, signal.SIGKILL)  # as Ray kills an actor: the children are orphaned
        parent.wait()
        assert proctree.tagged_pids(tag) == sorted(pids[1:])
        assert proctree.kill_tree(tag) == sorted(pids[1:])
        assert not any(proctree._running(p) for p in pids)
        assert proctree.tagged_pids(tag) == [] and proctree.kill_tree(tag) == []
        assert bystander.poll() is None  # only the tagged tree
    finally:
        bystander.kill()
        for pid in proctree.tagged_pids(tag):
            os.kill(pid, signal.SIGKILL)

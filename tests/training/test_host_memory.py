"""deepspeed_backend.return_freed_host_memory: freed full-size tensors leave the rank's RSS (issue 23).

Each case runs in a fresh interpreter (glibc's malloc settings are per process): a 16 MiB tensor
freed raises glibc's mmap threshold, then 4 MiB tensors (as zero.Init's full-size parameters)
interleaved with small ones that stay (as the partitions) are freed; what stays in RssAnon is the
retained memory.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import re, sys, torch
from pathlib import Path
if sys.argv[1] == "fix":
    from selfsteer.training.deepspeed_backend import return_freed_host_memory
    assert return_freed_host_memory()
anon = lambda: int(re.search(r"RssAnon:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) // 1024
big = torch.ones(4 << 20); del big          # 16 MiB: served by mmap, raises the threshold to 16 MiB
before = anon()
full, kept = [], []
for _ in range(32):
    full.append(torch.ones(1 << 20))         # 4 MiB, below the raised threshold: from the heap
    kept.append(torch.ones(1 << 14))         # 64 KiB that stays, between them
del full
print(anon() - before)
"""


def _retained_mib(mode: str) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc's malloc only")
def test_freed_full_size_tensors_leave_the_rss():
    assert _retained_mib("plain") > 64  # the failure the fix removes: the freed 128 MiB stay
    assert _retained_mib("fix") < 8

"""A stale extension-build lock (its builder killed) is removed; a held one is kept (issue #26 item 10)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from selfsteer.training.build_lock import clear_stale_build_locks, extensions_root, lock_holders


def _plant(root, name="deepspeed_shm_comm"):
    build = root / "py311_cpu" / name
    build.mkdir(parents=True)
    lock = build / "lock"
    fd = os.open(lock, os.O_CREAT | os.O_EXCL)  # what torch's FileBaton does; then its builder dies
    os.close(fd)
    return lock


def test_stale_lock_removed_and_held_lock_kept(tmp_path, caplog):
    stale = _plant(tmp_path)
    held = _plant(tmp_path, "other_op")
    # A live builder: a process holding its lock open, as FileBaton does until release().
    builder = subprocess.Popen([sys.executable, "-c", f"import os, sys, time; fd = os.open({str(held)!r}, os.O_RDONLY); "
                                "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "ready"
        assert lock_holders(held) == [builder.pid] and lock_holders(stale) == []
        with caplog.at_level(logging.WARNING, logger="selfsteer.training.build_lock"):
            assert clear_stale_build_locks(tmp_path) == [stale]
        assert not stale.exists() and held.exists()
        text = caplog.text
        assert f"removed stale extension build lock {stale}" in text
        assert f"{held} is held by pid {builder.pid}" in text
    finally:
        builder.kill()
        builder.wait()
    assert clear_stale_build_locks(tmp_path) == [held]  # its builder is gone now


_START = textwrap.dedent("""
    import datetime, logging, os, torch.distributed as dist
    logging.basicConfig(level=logging.WARNING)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    store = dist.TCPStore("127.0.0.1", 0, 1, True)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    from selfsteer.training.build_lock import init_deepspeed_distributed
    init_deepspeed_distributed("gloo", datetime.timedelta(seconds=60))
    print("started")
""")


@pytest.mark.slow
def test_deepspeed_start_is_not_hung_by_a_stale_build_lock(tmp_path):
    """DeepSpeed's CPU comm op is loaded through a build dir holding a dead builder's lock: the start
    goes on (before the fix it waited forever). The user's build is copied, so nothing is compiled."""
    built = extensions_root() / "py311_cpu" / "deepspeed_shm_comm"
    root = tmp_path / "ext"
    if built.is_dir():
        shutil.copytree(built, root / "deepspeed_shm_comm", ignore=shutil.ignore_patterns("lock"))
    (root / "deepspeed_shm_comm").mkdir(parents=True, exist_ok=True)
    os.close(os.open(root / "deepspeed_shm_comm" / "lock", os.O_CREAT | os.O_EXCL))
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(root), "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _START], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "started" in proc.stdout, proc.stderr[-3000:]
    assert "removed stale extension build lock" in proc.stderr
    assert "deepspeed_shm_comm" in proc.stdout + proc.stderr  # DeepSpeed did load (build) the op

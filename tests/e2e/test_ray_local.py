"""The in-process Ray of `selfsteer run`: loopback only, no token file, gone with its driver."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest


def _listening(procs):
    out = []
    for p in procs:
        try:
            out += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    return out


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if getattr(addr, "ipv4_mapped", None) is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def test_a_store_listens_only_on_its_host():
    """torch's TCPStore binds every interface unless handed a bound socket (open_store does)."""
    from selfsteer.sync.collective import open_store

    store = open_store("127.0.0.1", 2, 10)
    mine = [c.laddr for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == store.port]
    assert mine and all(_is_loopback(addr.ip) for addr in mine), mine


@pytest.mark.slow
def test_listeners_on_loopback_and_none_outlive_a_killed_driver(tmp_path, toy_cache):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}  # the product's default
    env["HOME"] = str(home)  # RAY_AUTH_MODE unset: the run itself must keep Ray from writing a token here
    run_dir = tmp_path / "run"
    driver = subprocess.Popen([sys.executable, "-m", "selfsteer.cli.main", "run", "configs/tiny_cpu.yaml", "rounds=2",
                               f"model.cache_dir={toy_cache}", "tensorboard=false", f"output_dir={run_dir}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        marker = run_dir / "rounds" / "round_0001" / "triples.jsonl"  # every role has started and answered
        deadline = time.time() + 600
        while not marker.exists():
            assert driver.poll() is None, "the run ended before round 1 was sampled"
            assert time.time() < deadline
            time.sleep(0.1)
        root = psutil.Process(driver.pid)
        tree = [root] + root.children(recursive=True)
        names = {p.name() for p in tree}
        assert "gcs_server" in names and "raylet" in names, names
        sockets = _listening(tree)
        assert sockets, "no listener found: the check would pass vacuously"
        exposed = [s for s in sockets if not _is_loopback(s[1])]
        assert not exposed, f"listening beyond loopback: {exposed}"
        ray_tree = [p for p in tree[1:] if p.name() != "python" or "reaper" not in " ".join(p.cmdline())]
        os.kill(driver.pid, signal.SIGKILL)  # the driver only: Ray's processes are left to fend for themselves
        driver.wait()
        deadline = time.time() + 15
        while time.time() < deadline:
            alive = [p for p in ray_tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            if not alive:
                break
            time.sleep(0.5)
        assert not alive, f"outlived the driver by 15 s: {[(p.pid, p.name()) for p in alive]}"
        assert not (home / ".ray").exists(), "an auth token was written into the home directory"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

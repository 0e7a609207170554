"""Shared-storage check: every role must see the run's output_dir as the driver does.

On a cluster each role writes into output_dir (trainer states, HF checkpoints, DeepSpeed shards);
a node that has the path on its own local disk would write where no resume finds it. The driver
writes a marker file holding a random token into output_dir before any role starts, and passes
(path, token) to every role in its runtime_env; each role reads the marker first thing in its
constructor, and a missing or different one fails at once, naming the node and the path.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path
from typing import Optional

from selfsteer.utils.io import write_text

MARKER_FILE = ".selfsteer-storage-marker"
MARKER_ENV = "SELFSTEER_RUN_MARKER"  # json {"path": ..., "token": ...} in each role's environment
# Tests: "role=/driver/prefix=/role/prefix" makes the roles named so look the path up under another prefix,
# as a node with the directory mounted elsewhere (or not shared) would.
VIEW_ENV = "SELFSTEER_TEST_STORAGE_VIEW"


class StorageError(RuntimeError):
    """output_dir as a role sees it is not the driver's directory."""


def write_marker(run_dir: Path) -> dict[str, str]:
    """Write a fresh marker into `run_dir` (durably); returns the env vars that carry it to roles."""
    token = secrets.token_hex(16)
    path = Path(run_dir) / MARKER_FILE
    write_text(path, token)
    return {MARKER_ENV: json.dumps({"path": str(path), "token": token})}


def check_marker(role: str, env: Optional[dict] = None) -> None:
    """Raise StorageError unless this process reads the driver's token at the marker path.

    No marker in the environment (an actor started outside a run, e.g. in a unit test): no check.
    """
    env = os.environ if env is None else env
    spec = env.get(MARKER_ENV)
    if not spec:
        return
    want = json.loads(spec)
    path = Path(_view(role, want["path"], env.get(VIEW_ENV, "")))
    try:
        found = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        found = None
        why = f"it cannot be read here ({exc.strerror or exc})"
    else:
        why = "it holds another run's token (another directory, or a copy not shared with the driver)"
    if found != want["token"]:
        raise StorageError(f"{role} on node {node_name()}: output_dir marker {path} is not the driver's: {why}. "
                           f"output_dir must be storage every node sees at the same path (NFS, a shared "
                           f"volume); a node-local directory would keep this node's checkpoints where "
                           f"--resume cannot find them")


def node_name() -> str:
    """Ray node id and IP when inside Ray, else the host name and its address."""
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            return f"{ctx.get_node_id()[:12]} ({ray.util.get_node_ip_address()})"
    except Exception:  # noqa: BLE001 - naming the node must never hide the storage error itself
        pass
    host = socket.gethostname()
    try:
        return f"{host} ({socket.gethostbyname(host)})"
    except OSError:
        return host


def _view(role: str, path: str, view: str) -> str:
    """`path` as this role sees it under the test hook VIEW_ENV ("role=/from=/to"); else itself."""
    if not view:
        return path
    who, _, mapping = view.partition("=")
    src, _, dst = mapping.partition("=")
    if role.startswith(who) and src and path.startswith(src):
        return dst + path[len(src):]
    return path

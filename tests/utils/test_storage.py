"""Shared-storage marker: a role that does not see the driver's output_dir fails at start, naming
its node and the path."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from selfsteer.utils import storage


def test_a_role_that_reads_the_drivers_marker_passes(tmp_path):
    env = storage.write_marker(tmp_path)
    storage.check_marker("reference", env)  # same directory: no error
    storage.check_marker("reference", {})  # no marker given (not in a run): no check


def test_another_directory_or_token_fails_naming_the_node_and_path(tmp_path):
    (tmp_path / "a").mkdir()
    env = storage.write_marker(tmp_path / "a")
    other = tmp_path / "b"
    other.mkdir()
    with pytest.raises(storage.StorageError, match=r"trainer rank 1 on node .*b/\.selfsteer-storage-marker.*cannot be read"):
        storage.check_marker("trainer rank 1", {**env, storage.VIEW_ENV: f"trainer={tmp_path / 'a'}={other}"})
    storage.write_marker(other)  # a marker from another run at the path this role sees
    with pytest.raises(storage.StorageError, match="another run's token"):
        storage.check_marker("trainer rank 1", {**env, storage.VIEW_ENV: f"trainer={tmp_path / 'a'}={other}"})
    storage.check_marker("reference", {**env, storage.VIEW_ENV: f"trainer={tmp_path / 'a'}={other}"})  # not mapped


@pytest.mark.slow
@pytest.mark.parametrize("role", ["trainer rank 0", "reference"])
def test_a_run_whose_role_sees_another_directory_fails_in_seconds(tmp_path, toy_cache, role):
    """The whole run on the in-process Ray: one role's view of output_dir is another (empty)
    directory, as on a node where the path is local disk; the run exits, naming role, node and path."""
    run_dir, elsewhere = tmp_path / "run", tmp_path / "node-local"
    elsewhere.mkdir()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", storage.VIEW_ENV: f"{role}={run_dir}={elsewhere}"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "selfsteer.cli.main", "run", "configs/tiny_cpu.yaml", "rounds=1",
                           f"model.cache_dir={toy_cache}", "tensorboard=false", "trainer.num_ranks=1",
                           "rollout.num_engines=1", f"output_dir={run_dir}"],
                          env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert f"{role} on node " in proc.stderr, proc.stderr[-3000:]
    assert str(elsewhere / storage.MARKER_FILE) in proc.stderr
    assert not (run_dir / "state.json").exists() and not (run_dir / "rounds").exists()
    assert "is not the driver's" in proc.stderr  # the driver wrote its marker; the role looked elsewhere
    # The refused start undid itself (docs/guide/faults.md): nothing blocks the corrected rerun.
    assert not (run_dir / storage.MARKER_FILE).exists() and not (run_dir / "config.yaml").exists()
    print(f"{role}: failed after {elapsed:.1f} s")

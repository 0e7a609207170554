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
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local `ray start --head` on free ports, stopped after the module; yields (dashboard address, env, bin dir)."""
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
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        while subprocess.run([str(bin_dir / "ray"), "job", "list", "--address", address], env=env,
                             capture_output=True).returncode != 0:
            assert head.poll() is None, head.stdout.read()
            assert time.time() < deadline, "ray head did not come up"
            time.sleep(2)
        yield address, env, bin_dir
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)


RUNTIME_ENV = {"excludes": [".git", ".venv*", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache"]}


def _submit_cmd(cluster, submission_id: str, *entry: str, runtime_env=None, no_wait=False) -> list[str]:
    address, _, bin_dir = cluster
    return [str(bin_dir / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
            "--runtime-env-json", json.dumps({**RUNTIME_ENV, **(runtime_env or {})}), "--submission-id",
            submission_id, *(["--no-wait"] if no_wait else []), "--", "python", "ray_jobs/online_sso.py", *entry]


def _submit(cluster, cmd: list[str]):
    """Run `cmd`, retried while the head's job agent has not registered (the job server answers
    `job list` before it has; the submission is refused, nothing started, so retrying is safe)."""
    deadline = time.time() + 120
    while True:
        job = subprocess.run(cmd, env=cluster[1], capture_output=True, text=True, timeout=900)
        if job.returncode == 0 or "No available agent" not in job.stderr + job.stdout:
            return job
        assert time.time() < deadline, "the head's job agent never registered"
        time.sleep(3)


def test_ray_job_submit_runs_online_sso(tmp_path, toy_cache, ray_cluster):
    from ray.job_submission import JobStatus, JobSubmissionClient

    address = ray_cluster[0]
    out = tmp_path / "job-run"
    submit = _submit_cmd(ray_cluster, "selfsteer-test", "--config", "configs/tiny_cpu.yaml", "rounds=1",
                         f"output_dir={out}", f"model.cache_dir={toy_cache}")
    job = _submit(ray_cluster, submit)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert JobSubmissionClient(address).get_job_status("selfsteer-test") == JobStatus.SUCCEEDED
    assert f"run directory: {out}" in job.stdout + job.stderr  # printed at start, absolute
    # A relative output_dir would land in Ray's temporary copy of the working dir: refused at start.
    relative = [w if not w.startswith("output_dir=") else "output_dir=runs/job-relative" for w in submit]
    relative[relative.index("selfsteer-test")] = "selfsteer-relative"
    bad = subprocess.run(relative, env=ray_cluster[1], capture_output=True, text=True, timeout=900)
    assert bad.returncode != 0 and "output_dir=/absolute/path" in bad.stdout + bad.stderr, bad.stdout[-3000:]
    assert JobSubmissionClient(address).get_job_status("selfsteer-relative") == JobStatus.FAILED
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "checkpoints" / "round_0001" / "model.safetensors").is_file()


def test_a_second_job_resumes_a_stopped_run(tmp_path, toy_cache, ray_cluster):
    """Job 1 is stopped (`ray job stop`) in round 2 before its metrics; job 2, a new submission
    with `--resume`, continues from round 1's state on the same (shared) output_dir."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, env, bin_dir = ray_cluster
    out = tmp_path / "job-resume"
    first = _submit_cmd(ray_cluster, "selfsteer-first", "--config", "configs/tiny_cpu.yaml", "rounds=2",
                        "trainer.num_ranks=1", "rollout.num_engines=1", "tensorboard=false",
                        f"output_dir={out}", f"model.cache_dir={toy_cache}",
                        runtime_env={"env_vars": {"SELFSTEER_TEST_PAUSE_AT": "before_metrics@2"}}, no_wait=True)
    job = _submit(ray_cluster, first)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    paused, deadline = out / ".paused-before_metrics", time.time() + 600
    client = JobSubmissionClient(address)
    while not paused.exists():
        assert client.get_job_status("selfsteer-first") in (JobStatus.PENDING, JobStatus.RUNNING), \
            client.get_job_logs("selfsteer-first")[-3000:]
        assert time.time() < deadline, "job 1 never reached round 2's metrics"
        time.sleep(1)
    subprocess.run([str(bin_dir / "ray"), "job", "stop", "--address", address, "selfsteer-first"], env=env,
                   capture_output=True, timeout=120)
    deadline = time.time() + 120
    while client.get_job_status("selfsteer-first") not in (JobStatus.STOPPED, JobStatus.FAILED):
        assert time.time() < deadline, "job 1 did not stop"
        time.sleep(1)
    assert json.loads((out / "state.json").read_text())["round"] == 1

    second = _submit(ray_cluster, _submit_cmd(ray_cluster, "selfsteer-second", "--resume", str(out)))
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert client.get_job_status("selfsteer-second") == JobStatus.SUCCEEDED
    assert [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "state.json").read_text())["round"] == 2
    assert (out / "checkpoints" / "round_0002" / "model.safetensors").is_file()

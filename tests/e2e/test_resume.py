"""Kill -9 the driver mid-round, `--resume`, and get the run an uninterrupted one would have given."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _cli(*args):
    return [sys.executable, "-m", "selfsteer.cli.main", "run", *args]


def _states(run_dir):
    return sorted(p.name for p in (run_dir / "trainer_state").glob("round_*"))


def _round_uuids(run_dir, r):
    path = run_dir / "rounds" / f"round_{r:04d}" / "principles.jsonl"
    return [json.loads(line)["uuid"] for line in path.read_text().splitlines()]


def _kill_when(marker, args, env=None):
    """Start `selfsteer run ARGS`, SIGKILL its whole process group once `marker` exists."""
    victim = subprocess.Popen(_cli(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 600
    while not marker.exists():
        assert victim.poll() is None, f"run ended before {marker.name} appeared"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()


def _resume(run_dir):
    proc = subprocess.run(_cli("--resume", str(run_dir)), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _assert_same_weights(full, killed, r=4):
    a = load_file(full / "checkpoints" / f"round_{r:04d}" / "model.safetensors")
    b = load_file(killed / "checkpoints" / f"round_{r:04d}" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


def test_kill_driver_mid_round_then_resume(tmp_path, toy_cache):
    common = ["rounds=4", f"model.cache_dir={toy_cache}", "tensorboard=false"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = subprocess.run(_cli("configs/tiny_cpu.yaml", *common, f"output_dir={full}"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # round 3 persisted, not yet trained
    _kill_when(killed / "rounds" / "round_0003" / "triples.jsonl", ["configs/tiny_cpu.yaml", *common, f"output_dir={killed}"])
    state = json.loads((killed / "state.json").read_text())
    assert state["round"] == 2

    _resume(killed)

    for r in (1, 2, 3, 4):
        assert _round_uuids(full, r) == _round_uuids(killed, r), f"round {r} saw other prompts"
    rounds = [json.loads(line)["round"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]
    _assert_same_weights(full, killed)


@pytest.mark.parametrize("point", ["before_metrics", "after_metrics"])
def test_kill_around_the_metrics_write_loses_no_round(tmp_path, toy_cache, point):
    """Killed after round 2 trained, before or after its metrics were written: after --resume
    every round has exactly one metrics line, equal to its rounds/round_NNNN/metrics.json."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "SELFSTEER_TEST_PAUSE_AT": f"{point}@2"}
    _kill_when(run_dir / f".paused-{point}", ["configs/tiny_cpu.yaml", "rounds=3", f"model.cache_dir={toy_cache}",
               "tensorboard=false", "trainer.num_ranks=1", "rollout.num_engines=1", f"output_dir={run_dir}"], env)
    assert json.loads((run_dir / "state.json").read_text())["round"] == 1  # round 2 is not finished yet
    _resume(run_dir)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2, 3]
    for m in lines:
        saved = json.loads((run_dir / "rounds" / f"round_{m['round']:04d}" / "metrics.json").read_text())
        assert {k: v for k, v in m.items() if k != "round"} == saved


def test_state_every_two_rounds_kill_then_resume_redoes_from_the_last_state(tmp_path, toy_cache):
    """save_state_every=2: killed after round 3 finished (metrics written, no state), --resume goes
    back to round 2's state and re-does round 3; rounds 3-4 equal an uninterrupted run's."""
    common = ["rounds=4", "save_state_every=2", f"model.cache_dir={toy_cache}", "tensorboard=false",
              "trainer.num_ranks=1", "rollout.num_engines=1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = subprocess.run(_cli("configs/tiny_cpu.yaml", *common, f"output_dir={full}"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _states(full) == ["round_0004"]  # older states pruned

    env = {**os.environ, "SELFSTEER_TEST_PAUSE_AT": "after_metrics@3"}
    _kill_when(killed / ".paused-after_metrics", ["configs/tiny_cpu.yaml", *common, f"output_dir={killed}"], env)
    assert json.loads((killed / "state.json").read_text())["round"] == 2  # round 3 finished without a state
    assert [json.loads(line)["round"] for line in (killed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert _states(killed) == ["round_0002"]

    _resume(killed)
    assert [json.loads(line)["round"] for line in (killed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    for r in (1, 2, 3, 4):
        rows = [(run / "rounds" / f"round_{r:04d}" / "triples.jsonl").read_text().splitlines() for run in (full, killed)]
        strip = [[{k: v for k, v in json.loads(x).items() if "time" not in k} for x in rs] for rs in rows]
        assert strip[0] == strip[1], f"round {r}'s triples differ from the uninterrupted run's"
    _assert_same_weights(full, killed)
    assert _states(killed) == ["round_0004"]

"""The signal-collapse alert: a pure streak counter, and a run that stops on it."""

import json
import subprocess
import sys

import pytest

from selfsteer.config.schema import SignalConfig
from selfsteer.run.metrics import SignalWatch


def test_alert_needs_patience_consecutive_rounds_out_of_bounds():
    watch = SignalWatch(SignalConfig(metric="signal/pair_identical", max_value=0.5, patience=2))
    seen = [watch.update({"signal/pair_identical": v})["signal/alert"] for v in (0.6, 0.2, 0.7, 0.9, 0.8, 0.1)]
    assert seen == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    low = SignalWatch(SignalConfig(metric="train/rewards_neg/margins", max_value=None, min_value=0.0, patience=1))
    assert low.update({"train/rewards_neg/margins": -0.1})["signal/alert"] == 1.0 and low.alerting
    assert low.update({})["signal/alert"] == 0.0  # a round without the metric resets the streak


@pytest.mark.slow
def test_run_stops_early_when_the_signal_collapses(tmp_path, toy_cache):
    out = tmp_path / "run"
    # data/triples < 1000 every round: the "collapse" fires after round 1, the run saves it and stops.
    proc = subprocess.run(
        [sys.executable, "-m", "selfsteer.cli.main", "run", "configs/tiny_cpu.yaml", "rounds=3", f"output_dir={out}",
         f"model.cache_dir={toy_cache}", "trainer.backend=torch", "trainer.num_ranks=1", "rollout.num_engines=1",
         "data.prompts_per_round=2", "signal.metric=data/triples", "signal.max_value=null", "signal.min_value=1000",
         "signal.patience=1", "signal.early_stop=true", "tensorboard=false"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1] and rows[0]["signal/alert"] == 1.0
    assert "collapsing" in proc.stderr and json.loads((out / "state.json").read_text())["round"] == 1

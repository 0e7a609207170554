"""The alignment benchmark end to end: online SSO aligns the start model on held-out prompts.

Issue #5's bar: with a fixed seed, within 10 minutes on 2 cores (start-model SFT included), online
SSO raises the held-out win rate against the start model to >= 70 %.
"""

import importlib.util
import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _benchmark():
    spec = importlib.util.spec_from_file_location("alignment_benchmark", REPO / "benchmarks" / "alignment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_online_sso_beats_the_start_model_within_ten_minutes(tmp_path):
    started = time.time()
    out = tmp_path / "bench"
    assert _benchmark().main(["--methods", "start,online_sso_v1", "--seeds", "0", "--rounds", "6",
                              "--eval-prompts", "64", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    elapsed = time.time() - started
    results = json.loads((out / "results.json").read_text())

    steer = results["_start"]["0"]["steerability"]
    for rule in ("Politeness", "Format", "Length", "Safety"):  # the start model is steerable...
        assert steer[rule]["good"] - steer[rule]["bad"] > 0.8, (rule, steer[rule])
    assert steer["none"]["gold"] < 0.6  # ...but not aligned

    rounds = results["online_sso_v1"]["0"]["rounds"]
    assert [r["round"] for r in rounds] == list(range(7))
    final = rounds[-1]
    assert final["sampled_win_rate"] >= 0.7, rounds
    assert final["sampled_gold"] > rounds[0]["sampled_gold"] + 0.15
    assert 0 <= final["pair_accuracy"] <= 1
    assert (out / "alignment.md").read_text().count("| online_sso_v1 |") == 1
    assert (out / "alignment.png").stat().st_size > 10_000
    assert elapsed < 600, f"took {elapsed:.0f} s"

"""benchmarks/weight_sync.py's measuring functions on the tiny toy model (the full run needs minutes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "weight_sync.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("weight_sync_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_copy_baseline_is_timed(bench):
    seconds = bench.copy_seconds(8 << 20, repeat=2)
    assert 0 < seconds < 5


def test_profile_times_every_stage(bench, toy_model_path):
    stages = bench.profile_stages(str(toy_model_path), bucket_mb=0.05, threads=1)
    assert set(stages) == {"pack", "pack_fresh", "load", "checksum", "broadcast"}
    assert all(0 < s < 30 for s in stages.values())


def test_bench_config_is_a_valid_run_config(bench, toy_model_path):
    args = bench.parse_args(["--sizes", "tiny", "--bucket-mb", "0.5,2", "--engines", "2", "--verify"])
    cfg = bench.bench_config(str(toy_model_path), args, 2.0)
    assert (cfg.sync.bucket_mb, cfg.sync.verify, cfg.rollout.num_engines, cfg.trainer.backend) == (2.0, True, 2, "torch")
    assert args.sizes == ["tiny"] and args.bucket_mb == [0.5, 2.0]


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "7b"], "unknown size '7b'"),
    (["--bucket-mb", "16,x"], "expected numbers"),
    (["--bucket-mb", "0"], "positive sizes"),
])
def test_bad_arguments_name_the_option(bench, argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err

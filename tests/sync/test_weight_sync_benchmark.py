"""benchmarks/weight_sync.py's measuring functions on the tiny toy model (the full run needs minutes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "weight_sync.py"


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
    assert (cfg.sync.bucket_mb, cfg.sync.verify, cfg.rollout.num_engines, cfg.trainer.backend) == (2.0, "always", 2, "torch")
    assert args.sizes == ["tiny"] and args.bucket_mb == [0.5, 2.0]
    shm = bench.bench_config(str(toy_model_path), bench.parse_args(["--method", "shm"]), 2.0)
    assert shm.placement == "colocated" and cfg.placement == "separate"


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "7b"], "unknown size '7b'"),
    (["--bucket-mb", "16,x"], "expected numbers"),
    (["--bucket-mb", "0"], "positive sizes"),
])
def test_bad_arguments_name_the_option(bench, argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_script_runs_end_to_end_at_the_tiny_size():
    """The real path (Ray, a trainer rank, an HF engine, WeightSyncer) at 0.1M parameters, ~20 s."""
    import re
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "tiny", "--bucket-mb", "0.05,1", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("machine: ") and "cores usable" in lines[0]
    rows = [line.split() for line in lines if line.split()[:1] == ["tiny"]]
    # 0.05 MB = 13,107 float32 of the toy model: [embed 36,352] and per layer [q/k/v 8,192 + o 4,096]
    # [gate/up 16,384: one fused unit, alone] [down 8,192 + two norms], the last with the final norm.
    assert [(r[3], r[4]) for r in rows] == [("0.05", "7"), ("1", "1")]  # bucket MB, buckets
    assert all(float(r[5]) > 0 for r in rows)  # sync seconds (the tiny model's ratio may round to 0.000)
    assert re.fullmatch(r"weight sync bandwidth ratio: \d+\.\d{3}", lines[-1])

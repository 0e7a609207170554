"""`--resume` never unpickles a planted object (issue #26 item 7): a real tiny run's DeepSpeed state
gets a harmless marker object; the resume is refused by file name, exit 2, and the marker never runs.
The untouched state then resumes through the weights-only loader."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


class Marker:
    """Unpickling it creates a file (a stand-in for code an attacker would run)."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def _run(*args):
    return subprocess.run([sys.executable, "-m", "selfsteer.cli.main", "run", *args], capture_output=True,
                          text=True, timeout=900)


def test_resume_refuses_planted_object_in_trainer_state(tmp_path, toy_cache):
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    proc = _run("configs/tiny_cpu.yaml", "rounds=1", f"model.cache_dir={toy_cache}", "tensorboard=false",
                f"output_dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    planted = sorted((run_dir / "trainer_state" / "round_0001").glob("*model_states.pt"))[0]
    original = tmp_path / "original.pt"
    shutil.copy(planted, original)
    state = torch.load(planted, map_location="cpu", weights_only=False)  # our own file, before planting
    state["planted"] = Marker(marker)
    torch.save(state, planted)
    before = {name: (run_dir / name).read_bytes() for name in ("config.yaml", "state.json", "schedule.json")}

    proc = _run("--resume", str(run_dir))
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("selfsteer: --resume: trainer state file") and str(planted) in last, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
    assert {name: (run_dir / name).read_bytes() for name in before} == before  # nothing rewritten

    shutil.copy(original, planted)
    proc = _run("--resume", str(run_dir), "rounds=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "round_0002").is_dir()
    assert not marker.exists()

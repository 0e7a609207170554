"""tests/gpu must run on a bare CUDA machine (torch, transformers, deepspeed, selfsteer): importing
them, and the selfsteer modules they use, must not need Ray or vLLM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHECK = """
import importlib, sys
sys.modules["ray"] = None  # `import ray` now raises ImportError, as on a machine without it
sys.modules["vllm"] = None
for name in sys.argv[1:]:
    importlib.import_module(name)
print(sorted(m for m in sys.modules if m.startswith("selfsteer")))
"""


def test_gpu_tests_import_without_ray_or_vllm():
    modules = ["tests.conftest", "tests.gpu.conftest"]
    modules += [f"tests.gpu.{p.stem}" for p in sorted((REPO / "tests" / "gpu").glob("test_*.py"))]
    assert len(modules) >= 6
    proc = subprocess.run([sys.executable, "-c", CHECK, *modules], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = proc.stdout
    for used in ("selfsteer.training", "selfsteer.algorithms.sso", "selfsteer.algorithms.logprobs",
                 "selfsteer.engines.hf_engine", "selfsteer.sync.buckets"):
        assert f"'{used}'" in loaded

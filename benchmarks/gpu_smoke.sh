#!/usr/bin/env bash
# GPU smoke test: tests/gpu on this machine's CUDA device, with timings (docs/guide/cluster.md).
# Needs torch (CUDA build), transformers, deepspeed and selfsteer's small pure-Python dependencies;
# no Ray, no vLLM:  pip install deepspeed transformers omegaconf pyyaml safetensors xxhash datasets
#                   pip install --no-deps -e .
# Usage: bash benchmarks/gpu_smoke.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import sys

import deepspeed
import torch
import transformers

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"deepspeed {deepspeed.__version__}")
if not torch.cuda.is_available():
    sys.exit("gpu_smoke: no CUDA device visible; nothing to run")
props = torch.cuda.get_device_properties(0)
print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible")
PY
# -s shows the tests' "[gpu timing]" lines; --durations=0 the time of every test.
exec python -m pytest tests/gpu -m gpu -s -q -p no:cacheprovider --durations=0 "$@"

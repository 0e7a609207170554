"""GPU tests (marker `gpu`; tests/conftest.py skips them without CUDA). They import only torch,
transformers, deepspeed and selfsteer modules that leave Ray and vLLM alone, so a bare CUDA machine
runs them (benchmarks/gpu_smoke.sh); tests/test_gpu_imports.py checks that on CPU."""

from __future__ import annotations

import os
import random
import socket

import pytest


@pytest.fixture(scope="session")
def rows(toy_model_path):
    """Contexts (some shared, as a DPO/SSO batch has) and responses of the toy model's tokens."""
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(toy_model_path).vocab_size
    rng = random.Random(0)

    def ids(lo, hi):
        return [rng.randrange(4, vocab) for _ in range(rng.randint(lo, hi))]

    distinct = [ids(3, 40) for _ in range(6)]
    contexts = [distinct[i % 6] for i in range(12)]
    return contexts, [ids(1, 30) for _ in range(12)]


@pytest.fixture(scope="session")
def process_group():
    """A one-rank NCCL group, as a trainer rank has (DeepSpeed adopts it)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", rank=0, world_size=1)
    yield dist
    dist.destroy_process_group()

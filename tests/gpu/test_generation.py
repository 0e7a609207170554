"""HF generation on CUDA: greedy tokens equal the CPU's; bf16 sampling keeps its limits; timed."""

from __future__ import annotations

import time

import pytest
import torch

from selfsteer.data.chat import encode_chat
from selfsteer.engines.base import Sampling
from selfsteer.engines.hf_engine import HFBackend

pytestmark = pytest.mark.gpu
PROMPTS = ["what is 3 plus 4 ?", "tell a short story about a cat .", "hi", "write a list of fruit and tea ."]


def test_greedy_on_cuda_equals_cpu(toy_model_path):
    greedy = Sampling(temperature=0.0, max_new_tokens=16)
    cpu = HFBackend(toy_model_path, device="cpu", dtype=torch.float32)
    cuda = HFBackend(toy_model_path, device="cuda", dtype=torch.float32)
    ids = [encode_chat(cpu.tokenizer, p) for p in PROMPTS]
    expected = [g.token_ids for g in cpu.generate(ids, [greedy] * len(ids))]
    assert [g.token_ids for g in cuda.generate(ids, [greedy] * len(ids))] == expected


def test_bf16_sampling_on_cuda(toy_model_path):
    engine = HFBackend(toy_model_path, device="cuda", dtype=torch.bfloat16, max_batch_size=64)
    ids = [encode_chat(engine.tokenizer, PROMPTS[i % len(PROMPTS)]) for i in range(64)]
    sampling = Sampling(temperature=0.7, top_p=0.8, max_new_tokens=64, seed=0)
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = engine.generate(ids, [sampling] * len(ids))
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tokens = sum(len(g.token_ids) for g in out)
    print(f"\n[gpu timing] HF generate bf16: 64 requests, {tokens} tokens in {elapsed:.2f} s ({tokens / elapsed:.0f} tokens/s)")
    assert len(out) == 64
    assert all(1 <= len(g.token_ids) <= 64 and g.finish_reason in ("stop", "length") for g in out)
    assert all(0 <= t < len(engine.tokenizer) for g in out for t in g.token_ids)

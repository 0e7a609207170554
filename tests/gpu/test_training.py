"""Trainer steps in bf16 on CUDA: the torch backend and DeepSpeed ZeRO 0-3, as a trainer rank builds them."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from selfsteer.algorithms.logprobs import packing_supported, score_sequences
from selfsteer.config.schema import TrainerConfig
from selfsteer.training import make_train_backend

pytestmark = pytest.mark.gpu
STEPS = 8


@pytest.mark.parametrize("backend, stage", [("torch", 0), ("deepspeed", 0), ("deepspeed", 1), ("deepspeed", 2),
                                            ("deepspeed", 3)])
def test_bf16_preference_steps_lower_the_loss(backend, stage, toy_model_path, rows, process_group):
    from transformers import AutoModelForCausalLM

    if backend == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl")  # adopts the group, as TrainerRank.setup does
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(toy_model_path, dtype=torch.bfloat16)
    model.config.use_cache = False
    tc = TrainerConfig(backend=backend, num_ranks=1, zero_stage=stage, lr=2e-3, lr_scheduler="constant",
                       warmup_ratio=0.0, micro_batch_size=6, grad_accum=1, device="cuda")
    engine = make_train_backend(backend, model, tc, total_steps=STEPS, device="cuda", dtype=torch.bfloat16)
    contexts, responses = rows
    chosen, rejected = responses[:6], responses[6:]
    engine.module.eval()
    packed = packing_supported(engine.forward, pad_id=0, device="cuda", vocab_size=model.config.vocab_size,
                               mask_dtype=torch.bfloat16)
    engine.module.train()  # (tests/gpu/test_numerics.py asserts the check passes on CUDA)
    losses = []
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(STEPS):
        logps, _ = score_sequences(engine.forward, contexts[:6] * 2, chosen + rejected, pad_id=0, device="cuda",
                                   micro_batch_size=12, packed=packed, mask_dtype=torch.bfloat16)
        loss = -F.logsigmoid(0.1 * (logps[:6] - logps[6:])).mean()
        engine.backward(loss, boundary=True)
        stats = engine.step()
        if backend == "torch":  # DeepSpeed reports no global norm for some stages (nan)
            assert torch.isfinite(torch.tensor(stats["grad_norm"]))
        losses.append(loss.item())
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    layout = "packed" if packed else "padded"
    name = "torch backend" if backend == "torch" else f"DeepSpeed ZeRO-{stage}"
    print(f"\n[gpu timing] {name} bf16: {STEPS} steps of 12 {layout} rows in {elapsed:.2f} s "
          f"({1000 * elapsed / STEPS:.1f} ms/step), peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cuda" for p in engine.module.parameters())
    assert losses[-1] < losses[0] - 1e-3, losses

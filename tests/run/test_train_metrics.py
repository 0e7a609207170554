"""Honest training metrics and checkpoints: `train/lr` is the lr the optimizer steps applied (not the
scheduler's value after the round), `grad_norm` is reported under every backend (ZeRO-0 included),
and tied checkpoints are saved tied with `use_cache` as the model had it."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch

from selfsteer.config.schema import load_config


def _toy_loss(model, vocab: int = 64) -> torch.Tensor:
    ids = torch.arange(1, 13).view(2, 6) % vocab
    return model(input_ids=ids, labels=ids).loss


def test_torch_backend_reports_each_steps_lr_and_pre_clip_grad_norm(toy_model_path):
    from transformers import AutoModelForCausalLM

    from selfsteer.training.torch_backend import TorchBackend

    tc = load_config(None, ["trainer.lr=1e-3", "trainer.warmup_ratio=0", "trainer.lr_scheduler=cosine",
                            "trainer.grad_clip=1e-6"]).trainer
    torch.manual_seed(0)
    backend = TorchBackend(AutoModelForCausalLM.from_pretrained(toy_model_path), tc, total_steps=4, device="cpu",
                           dtype=torch.float32)
    lrs, norms = [], []
    for _ in range(2):
        loss = _toy_loss(backend.module)
        backend.backward(loss, boundary=True)
        expected_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in backend._params if p.grad is not None]))
        out = backend.step()
        lrs.append(out["lr"])
        norms.append((out["grad_norm"], float(expected_norm)))
    # Step 1 applies the full lr (no warmup); step 2 the cosine value after one of four steps.
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert backend.scheduler.get_last_lr()[0] == pytest.approx(0.5e-3)  # the old, misleading end-of-round value
    for got, expected in norms:  # the norm before clipping to 1e-6
        assert got == pytest.approx(expected, rel=1e-5) and got > 1e-3


def _items(n: int, keys, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{k: {"context": [rng.randrange(4, 60) for _ in range(6)], "response": [rng.randrange(4, 60) for _ in range(4)],
                 "ref_logp": -20.0 + rng.random()} for k in keys} for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("backend,stage", [("deepspeed", 0), ("deepspeed", 3), ("torch", 0)])
def test_trainer_group_metrics_and_tied_checkpoint(ray_local, toy_cache, tmp_path, backend, stage):
    from safetensors import safe_open

    from selfsteer.actors.trainer_group import TrainerGroup
    from selfsteer.algorithms.sso import REQUIRED_KEYS
    from selfsteer.data.triples import SSO_ROWS
    from selfsteer.actors.inputs import resolve_model

    cfg = load_config("configs/tiny_cpu.yaml", [
        f"model.cache_dir={toy_cache}", f"trainer.backend={backend}", f"trainer.zero_stage={stage}",
        "trainer.num_ranks=1", "trainer.lr=1e-3", "trainer.lr_scheduler=cosine", "trainer.warmup_ratio=0",
        "trainer.micro_batch_size=1", "trainer.grad_accum=2", f"output_dir={tmp_path}"])
    keys = [k for k in SSO_ROWS if k in REQUIRED_KEYS["v1"]]
    group = TrainerGroup(cfg, resolve_model(cfg), total_steps=4)
    try:
        (result,) = group.train(_items(4, keys), keys, dataclasses.asdict(cfg.loss))
        group.save_hf(str(tmp_path / "ckpt"))
    finally:
        group.shutdown()
    m = result["metrics"]
    assert result["optimizer_steps"] == 2
    # Mean of the two steps' lrs: 1e-3, then cosine after 1 of 4 steps (the scheduler then reads 5e-4).
    assert m["lr"] == pytest.approx((1e-3 + 1e-3 * 0.5 * (1 + math.cos(math.pi / 4))) / 2)
    assert math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), framework="pt") as fh:
        names = list(fh.keys())
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["use_cache"] is True

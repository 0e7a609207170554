"""LoRA through the real roles: trainer ranks (plain torch, DeepSpeed ZeRO-2/3) train only the adapter,
score the reference with it switched off exactly as a reference actor on the base does, sync only the
adapter into HF engines that then generate as the merged model, and restore it exactly from their state."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.helpers import SYNC_PROMPTS as PROMPTS
from tests.helpers import greedy_hf, sso_round, sso_stack

pytestmark = pytest.mark.slow


def _items(trainer, pool, ray, reference=None):
    from selfsteer.data.triples import training_items

    triples, keys, rows = sso_round(pool)
    sums, counts = trainer.reference_scores(*rows)
    if reference is not None:
        want, want_counts = ray.get(reference.score.remote(*rows))
        assert counts == want_counts
        assert sums == pytest.approx(want, abs=1e-4)
    return training_items(triples, keys, sums), keys


def _adapter(trainer, path):
    from safetensors.torch import load_file

    trainer.save_hf(str(path))
    return load_file(path / "adapter_model.safetensors")


@pytest.mark.parametrize("backend,zero_stage", [("torch", 0), ("deepspeed", 2), ("deepspeed", 3)])
def test_lora_trainer_reference_sync_and_resume(ray_local, toy_cache, tmp_path, backend, zero_stage):
    import ray

    from selfsteer.actors.syncer import WeightSyncer
    from selfsteer.config.schema import load_config
    from selfsteer.engines.base import ChatRequest, Sampling
    from selfsteer.training.lora import export_merged

    cfg = load_config("configs/tiny_cpu.yaml", [
        f"output_dir={tmp_path / 'run'}", f"model.cache_dir={toy_cache}", "model.lora.enabled=true",
        "model.lora.rank=4", "reference.mode=adapter_off", f"trainer.backend={backend}",
        f"trainer.zero_stage={zero_stage}", "trainer.lr=0.02", "sync.verify=always"])
    _, trainer, pool, reference = sso_stack(ray_local, cfg, tmp_path / "run", engines=1)
    try:
        syncer = WeightSyncer(trainer, cfg)
        assert all(".lora_" in s.name for b in syncer.buckets for s in b.slots)  # only the adapter travels
        start = _adapter(trainer, tmp_path / "a0")
        items, keys = _items(trainer, pool, ray, reference)
        trainer.train(items, keys, dataclasses.asdict(cfg.loss))
        trained = _adapter(trainer, tmp_path / "a1")
        assert any(not torch.equal(start[n], trained[n]) for n in start), "training left the adapter as it was"
        # The adapter moved, the reference (adapter off) did not: scores still equal the base's.
        items, keys = _items(trainer, pool, ray, reference)
        trainer.train(items, keys, dataclasses.asdict(cfg.loss))

        syncer.sync(pool.engines)  # verified: the engine's adapter fingerprints equal rank 0's
        _adapter(trainer, tmp_path / "a2")
        merged = export_merged(tmp_path / "a2", tmp_path / "merged")
        got = ray.get(pool.engines[0].generate.remote([ChatRequest(p) for p in PROMPTS],
                                                        Sampling(temperature=0.0, max_new_tokens=16)))
        expected = greedy_hf(merged, PROMPTS)
        assert [g.token_ids for g in got] == expected

        # Resume: the state after round 2, another round, then back: adapter and optimizer exactly restored.
        trainer.save_state(str(tmp_path / "state"), "round_0002")
        saved = _adapter(trainer, tmp_path / "s")
        trainer.train(items, keys, dataclasses.asdict(cfg.loss))
        once = _adapter(trainer, tmp_path / "r1")
        trainer.load_state(str(tmp_path / "state"), "round_0002")
        restored = _adapter(trainer, tmp_path / "s2")
        assert all(torch.equal(saved[n], restored[n]) for n in saved)
        trainer.train(items, keys, dataclasses.asdict(cfg.loss))
        again = _adapter(trainer, tmp_path / "r2")
        for n in once:  # same state, same items: the same step (the optimizer's moments came back too)
            assert torch.allclose(once[n], again[n], atol=1e-6), n
    finally:
        pool.shutdown()
        trainer.shutdown()
        ray.kill(reference)

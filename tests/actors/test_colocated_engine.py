"""A colocated rollout engine, in process: it sleeps (RSS drops), wakes on a shared-memory sync,
and then holds exactly the trainer's weights and samples what those weights sample."""

from __future__ import annotations

import pytest
import torch

from selfsteer.config.schema import ModelConfig, RolloutConfig
from selfsteer.engines.base import ChatRequest, Sampling
from selfsteer.sync import shm
from selfsteer.sync.buckets import fingerprint, plan_buckets

GREEDY = Sampling(temperature=0.0, max_new_tokens=10)
REQUESTS = [ChatRequest("tell a short story about a cat ."), ChatRequest("hi", system="be helpful .")]


@pytest.fixture()
def engine_and_trainer(toy_model_path):
    from transformers import AutoModelForCausalLM

    from selfsteer.actors.rollout import RolloutEngine

    torch.manual_seed(0)
    engine = RolloutEngine(toy_model_path, RolloutConfig(backend="hf", device="cpu"), ModelConfig(dtype="float32"),
                           colocated=True)
    trainer = AutoModelForCausalLM.from_pretrained(toy_model_path, dtype=torch.float32).eval()
    with torch.no_grad():  # "after training": weights the engine has never seen, sharp enough to steer greedy text
        for p in trainer.parameters():
            p.mul_(3.0).add_(torch.randn_like(p) * 0.05)
    return engine, trainer


def test_sleep_frees_memory_and_shm_sync_restores_trainer_weights(engine_and_trainer, tmp_path, monkeypatch):
    from selfsteer.engines.hf_engine import HFBackend

    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    engine, trainer = engine_and_trainer
    params = {n: p.detach() for n, p in trainer.named_parameters()}
    buckets = plan_buckets([(n, tuple(p.shape), p.dtype) for n, p in params.items()], bucket_bytes=64 * 1024)
    writer = shm.ShmWriter(buckets)
    writer.begin(1)
    sent = [fingerprint(writer.write(i, params)) for i in range(len(buckets))]

    assert engine.receive_local("shm", writer.handle(), buckets, True, version=1) == sent
    slept = engine.sleep()
    assert slept["supported"] == 1.0 and slept["rss_freed_mb"] > 0
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(REQUESTS, GREEDY)
    assert all(p.numel() == 0 for _, p in engine.backend.named_parameters())

    writer.begin(2)
    for i in range(len(buckets)):
        writer.write(i, params)
    got = engine.receive_local("shm", writer.handle(), buckets, True, version=2)
    assert got == sent and engine.weights_fingerprint(buckets) == sent and engine.weights_version == 2
    expected = HFBackend.__new__(HFBackend)  # the trainer's weights in a plain HF backend
    expected.__dict__.update(engine.backend.__dict__, model=trainer, _flats=((), []))
    from selfsteer.data.chat import encode_chat

    ids = [encode_chat(engine.tokenizer, r.prompt, r.system) for r in REQUESTS]
    want = [g.token_ids for g in expected.generate(ids, [GREEDY] * len(ids))]
    assert [g.token_ids for g in engine.generate(REQUESTS, GREEDY)] == want
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_wake_is_two_stage_weights_then_kv_cache_and_sleep_is_idempotent(engine_and_trainer, tmp_path, monkeypatch):
    """verl's order (issue 23): weights back, load, then the KV cache once the trainer's buckets are freed;
    engines sleep before reference scoring, so the round's later sleep must be a no-op."""
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    engine, trainer = engine_and_trainer
    params = {n: p.detach() for n, p in trainer.named_parameters()}
    buckets = plan_buckets([(n, tuple(p.shape), p.dtype) for n, p in params.items()], bucket_bytes=64 * 1024)
    writer = shm.ShmWriter(buckets)
    woken, real_wake = [], engine.backend.wake_up
    monkeypatch.setattr(engine.backend, "wake_up", lambda tags=None: (woken.append(tags), real_wake(tags))[1])
    assert engine.sleep()["supported"] == 1.0 and engine.asleep
    assert engine.sleep() == {"rss_freed_mb": 0.0, "supported": 1.0}  # already asleep: nothing freed twice
    writer.begin(1)
    for i in range(len(buckets)):
        writer.write(i, params)
    engine.receive_local("shm", writer.handle(), buckets, False, version=1)
    assert woken == [["weights"]] and engine.kv_asleep and not engine.asleep
    assert engine.finish_wake() and woken == [["weights"], ["kv_cache"]] and not engine.kv_asleep
    assert not engine.finish_wake()  # once
    engine.sleep()
    writer.begin(2)
    for i in range(len(buckets)):
        writer.write(i, params)
    engine.receive_local("shm", writer.handle(), buckets, False, version=2)
    assert len(engine.generate(REQUESTS, GREEDY)) == 2  # sampling finishes a wake the sync left half done
    assert woken[-2:] == [["weights"], ["kv_cache"]] and not engine.kv_asleep
    writer.close()

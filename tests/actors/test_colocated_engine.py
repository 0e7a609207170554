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


def _write_all(writer, buckets, params, version):
    """Trainer rank 0's side, in a thread (the pool cycles only while the engine loads)."""
    import threading

    sent = []

    def run():
        writer.begin(version, timeout_s=60)
        sent.extend(fingerprint(writer.write(i, params)) for i in range(len(buckets)))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, sent


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
    assert len(buckets) > shm.POOL_SLOTS  # the pool cycles
    thread, sent = _write_all(writer, buckets, params, 1)
    assert engine.receive_local("shm", writer.handle(), buckets, True, version=1) == sent
    thread.join()
    slept = engine.sleep()
    assert slept["supported"] == 1.0 and slept["rss_freed_mb"] > 0
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(REQUESTS, GREEDY)
    assert all(p.numel() == 0 for _, p in engine.backend.named_parameters())

    thread, _ = _write_all(writer, buckets, params, 2)
    got = engine.receive_local("shm", writer.handle(), buckets, True, version=2)
    thread.join()
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
    thread, _ = _write_all(writer, buckets, params, 1)
    engine.receive_local("shm", writer.handle(), buckets, False, version=1)
    thread.join()
    assert woken == [["weights"]] and engine.kv_asleep and not engine.asleep
    assert engine.finish_wake() and woken == [["weights"], ["kv_cache"]] and not engine.kv_asleep
    assert not engine.finish_wake()  # once
    engine.sleep()
    thread, _ = _write_all(writer, buckets, params, 2)
    engine.receive_local("shm", writer.handle(), buckets, False, version=2)
    thread.join()
    assert len(engine.generate(REQUESTS, GREEDY)) == 2  # sampling finishes a wake the sync left half done
    assert woken[-2:] == [["weights"], ["kv_cache"]] and not engine.kv_asleep
    writer.close()


def test_verification_checks_what_the_model_holds_not_what_arrived(engine_and_trainer, tmp_path, monkeypatch):
    """Issue 23: an engine whose load silently skips a tensor fails verification. Fingerprints of the
    received bytes (the old check) matched the trainer's although the model kept its old weight."""
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    engine, trainer = engine_and_trainer
    params = {n: p.detach() for n, p in trainer.named_parameters()}
    buckets = plan_buckets([(n, tuple(p.shape), p.dtype) for n, p in params.items()], bucket_bytes=64 * 1024)
    skipped = buckets[-1].slots[-1].name
    real_load = engine.backend.load_weights
    monkeypatch.setattr(engine.backend, "load_weights",
                        lambda named: real_load([(n, x) for n, x in named if n != skipped]))
    monkeypatch.setattr(engine.backend, "bucket_flats", lambda _: None)  # load by copy, through load_weights
    writer = shm.ShmWriter(buckets)
    thread, sent = _write_all(writer, buckets, params, 1)
    got = engine.receive_local("shm", writer.handle(), buckets, True, version=1)
    thread.join()
    assert got[:-1] == sent[:-1] and got[-1] != sent[-1]
    writer.close()

"""The sync is exact: after real DeepSpeed ZeRO-3 training steps, every engine holds the trainer's
weights bit for bit and generates, greedily, exactly what HF generates with the trainer's weights."""

from __future__ import annotations

import dataclasses

import pytest

from tests.helpers import SYNC_PROMPTS as PROMPTS
from tests.helpers import assert_engines_hold_checkpoint, sso_stack, train_sso_round

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(ray_local, toy_cache, tmp_path_factory):
    from selfsteer.actors.syncer import WeightSyncer
    from selfsteer.config.schema import load_config

    run_dir = tmp_path_factory.mktemp("sync-run")
    cfg = load_config("configs/tiny_cpu.yaml", [f"output_dir={run_dir}", f"model.cache_dir={toy_cache}"])
    inputs, trainer, pool, reference = sso_stack(ray_local, cfg, run_dir, engines=2)
    yield cfg, inputs, trainer, pool, reference, WeightSyncer(trainer, cfg), run_dir
    pool.shutdown()
    trainer.shutdown()


@pytest.mark.parametrize("method", ["collective", "object_store"])
def test_sync_after_training_is_exact(stack, method):
    import ray

    from selfsteer.actors.syncer import WeightSyncer
    from selfsteer.engines.base import Sampling

    cfg, inputs, trainer, pool, reference, syncer, run_dir = stack
    if method != cfg.sync.method:
        syncer = WeightSyncer(trainer, dataclasses.replace(cfg, sync=dataclasses.replace(cfg.sync, method=method)))
    before = ray.get(pool.engines[0].named_weights.remote())
    results = train_sso_round(ray, cfg, trainer, pool, reference)
    assert all(r["optimizer_steps"] >= 1 for r in results)
    stats = syncer.sync(pool.engines)
    assert stats["sync/buckets"] == len(syncer.buckets) > 1  # several buckets, one call each

    assert_engines_hold_checkpoint(ray, trainer, pool, before, run_dir / f"ckpt-{method}", PROMPTS,
                                   Sampling(temperature=0.0, max_new_tokens=16))


def test_sync_detects_a_diverged_engine(stack):
    import ray

    from selfsteer.sync.buckets import pack_bucket

    cfg, inputs, trainer, pool, reference, syncer, run_dir = stack
    syncer.sync(pool.engines)
    assert ray.get(pool.engines[0].weights_fingerprint.remote(syncer.buckets)) == \
        ray.get(pool.engines[1].weights_fingerprint.remote(syncer.buckets))
    # Perturb one engine behind the syncer's back: its fingerprint must no longer match.
    weights = ray.get(pool.engines[1].named_weights.remote())
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    ray.get(pool.engines[1].load_buckets.remote(
        syncer.buckets, [pack_bucket(b, weights, "cpu") for b in syncer.buckets], False))
    assert ray.get(pool.engines[0].weights_fingerprint.remote(syncer.buckets)) != \
        ray.get(pool.engines[1].weights_fingerprint.remote(syncer.buckets))
    syncer.sync(pool.engines)  # and a sync repairs it
    assert ray.get(pool.engines[0].weights_fingerprint.remote(syncer.buckets)) == \
        ray.get(pool.engines[1].weights_fingerprint.remote(syncer.buckets))


def test_dpo_loss_by_name_on_packed_zero3_rows(stack):
    """The same group trains a named loss (DPO on chosen/rejected), through packed rows under ZeRO-3."""
    import ray

    from selfsteer.algorithms.sso import REQUIRED_KEYS
    from selfsteer.data.triples import SSO_ROWS, Triple, scoring_rows, training_items
    from selfsteer.engines.base import ChatRequest, Sampling

    cfg, inputs, trainer, pool, reference, syncer, run_dir = stack
    assert all(info["packed"] for info in trainer.infos)  # the start-up check accepted the packed layout
    requests = []
    for p in PROMPTS[:4]:
        requests += [ChatRequest(p, "be helpful and polite ."), ChatRequest(p, "be rude and vague ."), ChatRequest(p)]
    gens = pool.generate(requests, Sampling(max_new_tokens=12, seed=5))
    triples = [Triple(str(i), i, p, "g", "b", *gens[3 * i:3 * i + 3]) for i, p in enumerate(PROMPTS[:4])]
    keys = [k for k in SSO_ROWS if k in REQUIRED_KEYS["v1"]][:2]
    assert keys == ["chosen", "rejected"]
    sums, _ = ray.get(reference.score.remote(*scoring_rows(triples, keys)))
    results = trainer.train(training_items(triples, keys, sums), keys, {"beta": 0.1}, loss="dpo")
    for r in results:
        assert r["optimizer_steps"] >= 1 and r["examples"] == 2
        assert {"loss", "rewards/accuracies", "logps/chosen"} <= set(r["metrics"])

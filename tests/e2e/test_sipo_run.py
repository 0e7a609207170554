"""SIPO end to end (docs/concepts/sipo.md): two real rounds with rewrite, both policies synced to the
engines. The unit tests are in tests/online/test_sipo.py."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_two_online_rounds_with_rewrite(ray_local, tmp_path, toy_cache):
    import ray
    from safetensors.torch import load_file

    from selfsteer.sync.buckets import fingerprint, pack_bucket
    from selfsteer.config.schema import load_config
    from selfsteer.run.driver import run

    out = tmp_path / "sipo"
    cfg = load_config("configs/sipo_tiny_cpu.yaml", [f"output_dir={out}", f"model.cache_dir={toy_cache}",
                                                     "tensorboard=false", "sipo.rewrite=true"])
    seen = {}

    def look(r, roles):  # both policies' engine copies, before round r samples
        engine = roles.pool.engines[-1]
        seen[r] = (ray.get(engine.weights_fingerprint.remote(roles.syncer.buckets)),
                   ray.get(engine.weights_fingerprint_b.remote(roles.syncer.buckets)), roles.syncer.buckets)  # B: A's layout

    run(cfg, on_round_start=look)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["sipo/kept_prompts"] >= 1 and m["data/pairs"] == 2 * m["sipo/kept_prompts"]
        assert m["train/optimizer_steps"] >= 1 and "train_b/loss" in m and "time/rewrite" in m
    for r in (1, 2):
        for rec in (json.loads(x) for x in (out / "rounds" / f"round_{r:04d}" / "candidates.jsonl").read_text().splitlines()):
            assert len(rec["candidates"]) == 4 and len(rec["reward_models"]) == 6  # A0, B0, 4 soups
            assert all(isinstance(c["review"], str) and isinstance(c["rewritten"], bool) for c in rec["candidates"])
            if rec["kept"] is not None:  # strictly better than both originals on every implicit reward
                kept = rec["candidates"][rec["kept"]]
                assert kept["pareto"] and all(c > o for orig in rec["original_rewards"] for c, o in zip(kept["rewards"], orig))
    # The engines hold round 1's trained policies when round 2 starts: A and B, both moved from stage 0.
    buckets = seen[1][2]
    for which, ckpt_dir in ((0, "checkpoints"), (1, "checkpoints_b")):
        trained = load_file(str(out / ckpt_dir / "round_0001" / "model.safetensors"))
        want = [fingerprint(pack_bucket(b, trained, "cpu")) for b in buckets]
        assert seen[2][which] == want and seen[1][which] != want, ckpt_dir

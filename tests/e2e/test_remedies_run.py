"""Signal-health remedies end to end (docs/guide/signal-health.md): every remedy on in one run, and a
round whose pairs are all dropped. The unit tests are in tests/run/test_remedies.py."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_every_remedy_on_in_one_run(ray_local, tmp_path, toy_cache):
    import ray

    from selfsteer.config.schema import load_config
    from selfsteer.run.driver import run

    out = tmp_path / "remedies"
    # The task's start model (a short SFT, ~10 s): principles steer it, so the filter has pairs to keep.
    cfg = load_config("configs/alignment_tiny.yaml", [
        "rounds=3", f"output_dir={out}", f"model.cache_dir={toy_cache}", "tensorboard=false",
        "task.sft_examples=2000", "data.prompts_per_round=24",
        "pairs.filter=v1", "pairs.drop_similar=0.9", "pairs.replay=1.0", "pairs.replay_rounds=2",
        "reference.refresh_every=1", "reference.num_actors=2"])
    prints = {}

    def look(round_index, roles):
        buckets = roles.syncer.buckets
        refs = ray.get([a.weights_fingerprint.remote(buckets) for a in roles.references])
        engine = ray.get(roles.pool.engines[0].weights_fingerprint.remote(buckets))
        assert len(refs) == 2 and refs[0] == refs[1], round_index  # every reference actor refreshed
        prints[round_index] = (refs[0], engine)

    run(cfg, on_round_start=look)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/optimizer_steps"] >= 1  # the filter kept something to train on
    # Round 1: reference and engine both hold the start weights; then the reference follows the policy.
    assert prints[1][0] == prints[1][1]
    for r in (2, 3):
        assert prints[r][0] == prints[r][1] and prints[r][0] != prints[1][0], r
    for r, m in enumerate(rows, start=1):
        triples = [json.loads(x) for x in (out / "rounds" / f"round_{r:04d}" / "triples.jsonl").read_text().splitlines()]
        kept = sum(t["trained"] for t in triples)
        assert m["pairs/filter_kept"] == pytest.approx(kept / len(triples))
        assert m["pairs/filter_kept"] <= m["pairs/filter_likely"] <= m["pairs/filter_ordered"] <= 1
        assert m["data/trained_pairs"] == kept + m["data/replayed"]
        assert "time/reference_refresh" in m
    # Replay draws from earlier rounds' kept pairs: none in round 1, at most as many as kept, capped by the window.
    assert rows[0]["data/replayed"] == 0
    assert rows[1]["data/replayed"] == min(rows[0]["data/trained_pairs"], rows[1]["data/trained_pairs"] - rows[1]["data/replayed"])



def test_a_round_with_every_pair_dropped_still_saves_the_round(ray_local, tmp_path, toy_cache):
    from selfsteer.config.schema import load_config
    from selfsteer.run.driver import run

    out = tmp_path / "empty"
    # drop_similar this low drops every pair (any two responses share some characters).
    cfg = load_config("configs/tiny_cpu.yaml", [
        "rounds=2", f"output_dir={out}", f"model.cache_dir={toy_cache}", "tensorboard=false", "trainer.backend=torch",
        "trainer.num_ranks=1", "rollout.num_engines=1", "data.prompts_per_round=3", "pairs.drop_similar=0.0001"])
    run(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["data/triples"] for m in rows] == [0.0, 0.0] and all(m["data/dropped_similar_pair"] > 0 for m in rows)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round_0001", "round_0002"]
    state = json.loads((out / "state.json").read_text())
    assert state["round"] == 2 and state["cursor"]["position"] == 6  # resume would not redo them

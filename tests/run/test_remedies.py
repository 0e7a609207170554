"""Signal-health remedies (docs/guide/signal-health.md): pair filter, near-identical drop, replay, reference refresh."""

from __future__ import annotations

import json

import pytest

from selfsteer.online.sso_pairs import ReplayBuffer

from tests.helpers import assert_config_rejects


def test_replay_draws_ratio_times_new_items_from_the_last_rounds_only():
    buf = ReplayBuffer(ratio=0.5, rounds=2, seed=0)
    assert buf.draw(10) == []  # nothing earlier yet
    for r in (1, 2, 3):
        buf.add([{"round": r, "i": i} for i in range(6)])
    drawn = buf.draw(10)
    assert len(drawn) == 5 and {d["round"] for d in drawn} <= {2, 3}  # round 1 fell out of the window
    assert len(buf.draw(100)) == 12  # capped by what the window holds
    off = ReplayBuffer(ratio=0.0, rounds=2, seed=0)
    off.add([{"x": 1}])
    assert off.draw(10) == [] and not off.rounds


def test_remedies_are_sso_and_dpo_only():
    assert_config_rejects([
        ("configs/sepo_tiny_cpu.yaml", "pairs.replay=1",
         r"pairs.\* and reference.refresh_every act on SSO/DPO pairs, not algo 'sepo'"),
        ("configs/tiny_cpu.yaml", "pairs.filter=v2",
         r"pairs.filter='v2' is not one of \['none', 'v1'\]"),
        ("configs/tiny_cpu.yaml", "pairs.drop_similar=0",
         r"pairs.drop_similar=0.0 must be in \(0, 1\]"),
    ])


@pytest.mark.slow
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


@pytest.mark.slow
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

"""Signal-health remedies (docs/guide/signal-health.md): pair filter, near-identical drop, replay, reference refresh.
Real runs: tests/e2e/test_remedies_run.py."""

from __future__ import annotations

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

"""Round state and metrics on disk: a round counts as finished only once its metrics are written."""

from __future__ import annotations

import json
from types import SimpleNamespace

from selfsteer.run import checkpoint

def test_resume_restores_a_finished_round_missing_from_metrics_jsonl(tmp_path):
    """A run written before metrics went ahead of state.json: round 2 finished, its line lost."""
    for r in (1, 2):
        (tmp_path / "rounds" / f"round_{r:04d}").mkdir(parents=True)
        (tmp_path / "rounds" / f"round_{r:04d}" / "metrics.json").write_text(json.dumps({"train/loss": r / 10}))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"round": 1, "train/loss": 0.1}) + "\n"
                                            + json.dumps({"round": 3, "train/loss": 0.3}) + "\n")
    restored = checkpoint.repair_metrics(tmp_path, last_round=2)
    assert restored == {2: {"train/loss": 0.2}}
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"round": 1, "train/loss": 0.1}, {"round": 2, "train/loss": 0.2}]


class _Trainer:
    def save_state(self, directory, tag):
        from pathlib import Path

        (Path(directory) / tag).mkdir(parents=True, exist_ok=True)


def test_a_saved_round_counts_only_once_committed(tmp_path):
    checkpoint.save_round(tmp_path, 1, _Trainer(), {"epoch": 0, "position": 8})
    checkpoint.commit_round(tmp_path)
    checkpoint.save_round(tmp_path, 2, _Trainer(), {"epoch": 0, "position": 16})
    assert checkpoint.load_state(tmp_path)["round"] == 1  # round 2 staged: its metrics are not written yet
    assert sorted(p.name for p in (tmp_path / "trainer_state").iterdir()) == ["round_0001", "round_0002"]
    checkpoint.commit_round(tmp_path)
    assert checkpoint.load_state(tmp_path) == {"round": 2, "cursor": {"epoch": 0, "position": 16},
                                               "trainer_tag": "round_0002"}
    assert [p.name for p in (tmp_path / "trainer_state").iterdir()] == ["round_0002"]


def test_state_schedule_every_n_rounds_and_always_the_last():
    assert [r for r in range(1, 8) if checkpoint.state_due(r, 3, 7)] == [3, 6, 7]
    assert [r for r in range(1, 4) if checkpoint.state_due(r, 1, 3)] == [1, 2, 3]
    assert [r for r in range(1, 4) if checkpoint.state_due(r, 5, 3)] == [3]


def test_rounds_without_a_state_leave_state_json_at_the_last_one(tmp_path):
    cfg = SimpleNamespace(save_state_every=2, rounds=5)
    for r in range(1, 4):
        checkpoint.save_round(tmp_path, r, _Trainer(), {"position": 8 * r}, cfg)
        checkpoint.commit_round(tmp_path)
    assert checkpoint.load_state(tmp_path) == {"round": 2, "cursor": {"position": 16}, "trainer_tag": "round_0002"}
    assert [p.name for p in (tmp_path / "trainer_state").iterdir()] == ["round_0002"]  # round 1's pruned


def test_resume_discards_the_rounds_after_the_last_state(tmp_path):
    """State at round 2, rounds 3-4 finished without one: their lines, round dirs and HF
    checkpoints go (the resume re-does them); rounds 1-2 stay."""
    lines = [json.dumps({"round": r, "x": r}) + "\n" for r in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines))
    for r in (1, 2, 3, 4):
        (tmp_path / "rounds" / f"round_{r:04d}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"round_{r:04d}").mkdir(parents=True)
    checkpoint.repair_metrics(tmp_path, 2)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:2])
    for parent in ("rounds", "checkpoints"):
        assert sorted(p.name for p in (tmp_path / parent).iterdir()) == ["round_0001", "round_0002"]


def test_resume_discards_policy_b_checkpoints_after_the_last_state_too(tmp_path):
    """SIPO's second policy writes checkpoints_b/: a re-done round's checkpoint there goes as well."""
    for r in (1, 2, 3):
        (tmp_path / "checkpoints_b" / f"round_{r:04d}").mkdir(parents=True)
    (tmp_path / "checkpoints_b" / "round_notes").mkdir()  # not a round: kept
    checkpoint.repair_metrics(tmp_path, 2)
    assert sorted(p.name for p in (tmp_path / "checkpoints_b").iterdir()) == ["round_0001", "round_0002", "round_notes"]

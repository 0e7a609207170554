"""Round state and metrics on disk: a round counts as finished only once its metrics are written."""

from __future__ import annotations

import json

from selfsteer import checkpoint

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

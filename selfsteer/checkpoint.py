"""Round checkpoints for `--resume`: trainer state, data cursor and round index, written atomically.

state.json is written last, so it always names a complete trainer state: a run killed at any
point resumes from the last round whose state.json landed, and re-runs the unfinished round
with the same prompts (the cursor) and the same seeds (derived from seed and round).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

STATE_FILE = "state.json"
TRAINER_DIR = "trainer_state"


def save_round(run_dir: Path, round_index: int, trainer, cursor_state: dict) -> None:
    tag = f"round_{round_index:04d}"
    trainer.save_state(str(run_dir / TRAINER_DIR), tag)
    state = {"round": round_index, "cursor": cursor_state, "trainer_tag": tag}
    tmp = run_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, run_dir / STATE_FILE)
    for old in (run_dir / TRAINER_DIR).glob("round_*"):  # keep only the state that state.json names
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)


def load_state(run_dir: Path) -> Optional[dict]:
    path = run_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def truncate_metrics(run_dir: Path, last_round: int) -> None:
    """Drop metric lines of rounds after `last_round` (an interrupted round is re-run)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["round"] <= last_round]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)

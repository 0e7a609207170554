"""Round checkpoints for `--resume`: trainer state, data cursor and round index, written atomically.

A round is finished when state.json names it, and that is written last: `save_round` stages the
state, the driver writes the round's metrics (fsynced), then `commit_round` moves the staged state
into place. A run killed at any point resumes from the last round whose state.json landed, with
that round's metrics on disk, and re-runs the unfinished round with the same prompts (the cursor)
and the same seeds (derived from seed and round).

The trainer state (about 107 GB at 7B under DeepSpeed) is written every `save_state_every` rounds
and at the last round, so state.json names the last round *with a state*: a resume goes back to
it and re-does the rounds after it (their round dirs, HF checkpoints and metrics lines are
replaced), which is exact because prompts and seeds depend only on the cursor and the round.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from selfsteer.training.steps import state_due
from selfsteer.utils.io import write_text
from selfsteer.utils.run_dir import ROUND_GROUPS, RunDir

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
STAGED_FILE = ".state.staged.json"  # the finished round's state, until its metrics are on disk
TRAINER_DIR = "trainer_state"
PAUSE_ENV = "SELFSTEER_TEST_PAUSE_AT"  # tests: stop at a named point so a kill lands in that window
STAYS_CONSTANT = "the rate stays constant"  # an extension that changes nothing: logged as info


def save_round(run_dir: Path, round_index: int, trainer, cursor_state: dict, cfg=None) -> None:
    """Save the trainer's state and stage the round's state.json, when `cfg.save_state_every` says
    this round has one; `commit_round` makes it count. Without a state the round leaves state.json
    as it is: a resume re-does it from the last round that has one."""
    if cfg is not None and not state_due(round_index, cfg.save_state_every, cfg.rounds):
        return
    tag = RunDir.tag(round_index)
    trainer.save_state(str(run_dir / TRAINER_DIR), tag)
    write_durably(run_dir / STAGED_FILE, json.dumps({"round": round_index, "cursor": cursor_state, "trainer_tag": tag}, indent=2))


def commit_round(run_dir: Path) -> None:
    """The staged round becomes the last finished one (call after its metrics are written)."""
    staged = run_dir / STAGED_FILE
    if not staged.is_file():
        return
    tag = json.loads(staged.read_text())["trainer_tag"]
    os.replace(staged, run_dir / STATE_FILE)
    for old in (run_dir / TRAINER_DIR).glob("round_*"):  # keep only the state that state.json names
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)


def load_state(run_dir: Path) -> Optional[dict]:
    """The last finished round's state, or None when there is none.

    Raises:
        ValueError: state.json is there but is not a state (truncated, edited); the message names it.
    """
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        if not isinstance(state["round"], int) or not isinstance(state["cursor"], dict) or not state["trainer_tag"]:
            raise TypeError("round must be an integer, cursor a mapping, trainer_tag a name")
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not a finished round's state ({type(exc).__name__}: {exc}); it is written "
                         "atomically, so it was changed or truncated outside selfsteer") from None
    return state


def repair_metrics(run_dir: Path, last_round: int) -> dict[int, dict]:
    """metrics.jsonl holds exactly one line per finished round, in order, on resume.

    Lines of rounds after `last_round` go (those rounds are re-run, with their round dirs and HF
    checkpoints, see `_discard_after`), as do repeated ones; a
    finished round without a line (a run written before metrics were saved ahead of state.json)
    gets it back from its `rounds/round_NNNN/metrics.json`. Returns the rounds restored that way.
    """
    (run_dir / STAGED_FILE).unlink(missing_ok=True)  # a round that never finished
    path = run_dir / "metrics.jsonl"
    lines: dict[int, str] = {}
    if path.is_file():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                r = json.loads(line)["round"] if line.strip() else None
            except (ValueError, KeyError, TypeError):  # a torn line (a kill or full disk mid-append): dropped
                logger.warning("%s: line %d is not a metrics record (%r...); dropped, the round's "
                               "metrics.json restores it", path, number, line[:40])
                continue
            if isinstance(r, int) and r <= last_round and r not in lines:
                lines[r] = line
    _discard_after(run_dir, last_round)
    restored = {}
    for r in range(1, last_round + 1):
        saved = RunDir(run_dir).round(r) / "metrics.json"
        if r not in lines and saved.is_file():
            restored[r] = json.loads(saved.read_text())
            lines[r] = json.dumps({"round": r, **restored[r]})
    missing = [r for r in range(1, last_round + 1) if r not in lines]
    if missing:
        logger.warning("%s: no metrics for finished round(s) %s (neither metrics.jsonl nor metrics.json)", run_dir, missing)
    write_durably(path, "".join(lines[r] + "\n" for r in sorted(lines)))
    return restored


def _discard_after(run_dir: Path, last_round: int) -> None:
    """Round dirs and HF checkpoints (SIPO's policy B's too) of rounds after `last_round` go: the
    resume re-does those rounds."""
    for group in ROUND_GROUPS:
        for r, path in RunDir(run_dir).numbered(group):
            if r > last_round:
                shutil.rmtree(path, ignore_errors=True)
                logger.info("resume: %s is re-done from round %d's state; removed %s", path.name, last_round, path)


def lr_schedule(run_dir: Path, cfg, resume: bool, write: bool = True) -> list[int]:
    """The learning-rate schedule's segment ends, in rounds (schedule.json, written unless not
    `write`: see `write_schedule`; call before config.yaml is rewritten). A resumed run asking for
    more rounds than planned gets a new segment (trainer.extend_schedule=restart) or keeps the old
    one, whose end value then holds (keep_end)."""
    path = run_dir / "schedule.json"
    if not resume:
        bounds = [cfg.rounds]
    else:
        if path.is_file():
            bounds = json.loads(path.read_text())["rounds"]
        else:  # a run from before schedule.json: its planned rounds are in its config.yaml
            import yaml

            bounds = [int(yaml.safe_load((run_dir / "config.yaml").read_text())["rounds"])]
        planned = bounds[-1]
        if cfg.rounds > planned:
            restart = cfg.trainer.extend_schedule == "restart"
            bounds = bounds + [cfg.rounds] if restart else bounds
            effect = _extension_effect(cfg.trainer, restart)
            logger.log(logging.INFO if effect == STAYS_CONSTANT else logging.WARNING,
                       "extending the run from %d to %d rounds: trainer.extend_schedule=%s (%s)", planned,
                       cfg.rounds, cfg.trainer.extend_schedule, effect)
    if write:
        write_schedule(run_dir, bounds)
    return bounds


def write_schedule(run_dir: Path, bounds: list[int]) -> None:
    write_durably(run_dir / "schedule.json", json.dumps({"rounds": bounds}))


def _extension_effect(trainer_cfg, restart: bool) -> str:
    """What an added schedule segment does to the rate: a constant schedule has no decay to restart,
    and without warmup nothing changes at all."""
    warmup = trainer_cfg.warmup_ratio > 0
    if trainer_cfg.lr_scheduler == "constant":
        if restart and warmup:
            return "a new warmup over the added rounds, then the constant rate"
        return STAYS_CONSTANT
    if restart:
        return "a new warmup and decay over the added rounds" if warmup else "a new decay over the added rounds"
    return "the rate stays where the old schedule ended"


def pause_point(name: str, run_dir: Path, round_index: int) -> None:
    """With SELFSTEER_TEST_PAUSE_AT=name@round, mark `run_dir/.paused-<name>` and wait to be killed."""
    if os.environ.get(PAUSE_ENV) == f"{name}@{round_index}":
        (run_dir / f".paused-{name}").write_text(str(os.getpid()))
        while True:
            time.sleep(60)


write_durably = write_text  # atomic and fsynced (selfsteer.utils.io)

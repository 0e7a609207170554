"""The learning rate of a run extended with `--resume rounds=N`: a choice, never a silent jump."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from selfsteer.run import checkpoint
from selfsteer.config.schema import RunConfig, TrainerConfig, save_config
from selfsteer.actors.roles import schedule_steps, steps_per_round
from selfsteer.training.base import make_optimizer_and_scheduler


def _lrs(tc: TrainerConfig, total_steps, n: int) -> list[float]:
    _, sched = make_optimizer_and_scheduler(torch.nn.Linear(2, 2), tc, total_steps)
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def test_one_segment_equals_transformers_schedule():
    from transformers import get_scheduler

    tc = TrainerConfig(lr=1.0, warmup_ratio=0.25)
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    ref = get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=8)
    expected = []
    for _ in range(9):
        expected.append(ref.get_last_lr()[0])
        opt.step()
        ref.step()
    assert _lrs(tc, 8, 9) == pytest.approx(expected, abs=1e-12)


def test_restart_and_keep_end_by_hand():
    tc = TrainerConfig(lr=1.0, warmup_ratio=0.25)
    # 8 steps, warmup 2, then a cosine over 6
    first = [0.0, 0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(1, 6)]
    # restart: 4 more steps get warmup 1 and a decay over 3
    added = [0.0, 1.0, 0.5 * (1 + math.cos(math.pi / 3)), 0.5 * (1 + math.cos(2 * math.pi / 3))]
    assert _lrs(tc, [8, 4], 12) == pytest.approx(first + added, abs=1e-12)
    assert _lrs(tc, [8], 12) == pytest.approx(first + [0.0] * 4, abs=1e-12)  # keep_end: cosine ended at 0


def test_resumed_scheduler_takes_the_new_segments_not_the_checkpoints():
    tc = TrainerConfig(lr=1.0, warmup_ratio=0.0)
    model = torch.nn.Linear(2, 2)
    _, old = make_optimizer_and_scheduler(model, tc, 4)
    for _ in range(4):
        old.optimizer.step()
        old.step()
    assert old.get_last_lr()[0] == pytest.approx(0.0)  # the finished run's cosine ended at 0
    _, new = make_optimizer_and_scheduler(model, tc, [4, 4])
    new.load_state_dict(old.state_dict())
    new.optimizer.step()
    new.step()
    assert new.get_last_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # step 1 of the new segment


@pytest.mark.parametrize("mode, bounds", [("restart", [6, 8]), ("keep_end", [6])])
def test_extending_a_finished_run_records_the_schedule(tmp_path, mode, bounds):
    cfg = RunConfig(rounds=6)
    assert checkpoint.lr_schedule(tmp_path, cfg, resume=False) == [6]
    save_config(cfg, tmp_path / "config.yaml")
    longer = dataclasses.replace(cfg, rounds=8, trainer=dataclasses.replace(cfg.trainer, extend_schedule=mode))
    assert checkpoint.lr_schedule(tmp_path, longer, resume=True) == bounds
    assert checkpoint.lr_schedule(tmp_path, longer, resume=True) == bounds  # resuming again changes nothing
    (tmp_path / "schedule.json").unlink()  # a run from before schedule.json: config.yaml's rounds
    assert checkpoint.lr_schedule(tmp_path, longer, resume=True) == bounds
    spr = steps_per_round(longer)
    assert schedule_steps(longer, bounds) == ([6 * spr, 2 * spr] if mode == "restart" else [6 * spr])


@pytest.mark.parametrize("scheduler, warmup, mode, says, level", [
    ("constant", 0.0, "restart", "the rate stays constant", "INFO"),
    ("constant", 0.0, "keep_end", "the rate stays constant", "INFO"),
    ("constant", 0.1, "restart", "a new warmup over the added rounds, then the constant rate", "WARNING"),
    ("cosine", 0.1, "restart", "a new warmup and decay over the added rounds", "WARNING"),
    ("cosine", 0.0, "restart", "a new decay over the added rounds", "WARNING"),
])
def test_the_extension_message_says_what_the_schedule_really_does(tmp_path, caplog, scheduler, warmup, mode, says,
                                                                  level):
    cfg = RunConfig(rounds=3, trainer=TrainerConfig(lr_scheduler=scheduler, warmup_ratio=warmup, extend_schedule=mode))
    checkpoint.lr_schedule(tmp_path, cfg, resume=False)
    with caplog.at_level("INFO", logger="selfsteer.run.checkpoint"):
        checkpoint.lr_schedule(tmp_path, dataclasses.replace(cfg, rounds=5), resume=True)
    [record] = [r for r in caplog.records if "extending the run" in r.getMessage()]
    assert says in record.getMessage() and record.levelname == level
    if scheduler == "constant":
        assert "decay" not in record.getMessage()

"""Where `selfsteer plan` puts the reference's work: its actors' GPUs, or (reference.mode=trainer /
adapter_off) the trainer ranks, and what a frozen copy on the ranks adds to each rank."""

from __future__ import annotations

import dataclasses

from selfsteer.plan import lora as lm
from selfsteer.plan import memory as gm


def reference_gpus(cfg) -> int:
    """GPUs that score the reference: its actors, or (reference.mode=trainer / adapter_off) the
    trainer ranks, each its share of the rows (under ZeRO-3 in lockstep: training.rank_scoring)."""
    return cfg.reference.num_actors if cfg.reference.mode == "actor" else cfg.trainer.num_ranks


def could_score_on_ranks(cfg) -> bool:
    """Whether this reference.mode=actor run would pass its checks with reference.mode=trainer."""
    if cfg.reference.mode != "actor":
        return False
    from selfsteer.config.checks import check_run
    from selfsteer.config.sections import ConfigError

    try:
        check_run(dataclasses.replace(cfg, reference=dataclasses.replace(cfg.reference, mode="trainer")))
    except (ConfigError, ValueError):
        return False
    return True


def frozen_reference(memory: dict, cfg, shape, p: int, work, *, split_head: bool) -> str:
    """reference.mode=trainer on one trainer rank: the frozen copy's share stays resident; its scoring
    forward runs in its own phase, so only what it needs beyond training's forward is added."""
    memory["reference weights"] = gm.reference_share(shape, p, cfg.trainer)
    scoring = sum(lm.reference_forward(cfg, shape, p, work, split_head=split_head).values())
    training = sum(memory.get(k, 0.0) for k in ("activations", "logits", "attention mask"))
    if scoring > training:
        memory["reference scoring excess"] = scoring - training
    return (f"(frozen start model {memory['reference weights'] / gm.GIB:.2f} GiB; its scoring forward "
            f"{scoring / gm.GIB:.2f} GiB in its own phase, training's {training / gm.GIB:.2f})")

"""The colocated layout's GPU bundles: every role shares the trainer's GPUs (no Ray import here).

One placement group holds one bundle per GPU; on bundle i run trainer rank i and rollout engine i
(while there are engines), and the reference actor on bundle 0 (none with reference.mode=trainer). Each takes a fraction of the bundle's
GPU, so Ray gives all of them the same physical GPU (the fractions only let Ray schedule them
together; memory is shared by phase: engines sleep while the trainer trains). `selfsteer.plan.planner`
and `selfsteer.actors.roles` both use `colocated_slots`, so the plan shows what a run asks Ray for.
"""

from __future__ import annotations

from dataclasses import dataclass

# Scheduling shares of one GPU; they sum to 1 so the three roles fit one bundle exactly.
FRACTIONS = {"trainer": 0.5, "rollout": 0.3, "reference": 0.2}


@dataclass(frozen=True)
class Slot:
    role: str
    label: str
    bundle: int
    gpus: float
    cpus: float


def colocated_slots(cfg) -> tuple[list[dict], list[Slot]]:
    """The placement group's bundles ({"GPU": 1, "CPU": ...} per GPU) and where each actor goes."""
    tc, rc, ref = cfg.trainer, cfg.rollout, cfg.reference
    check_colocated_gpu(cfg)
    slots = [Slot("trainer", f"trainer rank {i}", i, FRACTIONS["trainer"], tc.num_cpus) for i in range(tc.num_ranks)]
    slots += [Slot("rollout", f"rollout engine {i}", i, FRACTIONS["rollout"], rc.num_cpus) for i in range(rc.num_engines)]
    if ref.mode == "actor":  # otherwise the trainer ranks score the reference themselves
        slots.append(Slot("reference", "reference", 0, FRACTIONS["reference"], ref.num_cpus))
    bundles = [{"GPU": 1.0, "CPU": 0.0} for _ in range(tc.num_ranks)]
    for s in slots:
        bundles[s.bundle]["CPU"] += s.cpus
    return bundles, slots


def check_colocated_gpu(cfg) -> None:
    """What the GPU colocated layout needs, named by key (a ValueError the CLI prints)."""
    tc, rc = cfg.trainer, cfg.rollout
    if tc.num_gpus != 1:
        raise ValueError(f"placement=colocated on GPU gives each trainer rank one GPU; set trainer.num_gpus=1 "
                         f"(got {tc.num_gpus})")
    if rc.tensor_parallel_size != 1:
        raise ValueError("placement=colocated runs one engine per GPU beside its trainer rank; set "
                         f"rollout.tensor_parallel_size=1 (got {rc.tensor_parallel_size})")
    if rc.num_engines > tc.num_ranks:
        raise ValueError(f"placement=colocated: rollout.num_engines={rc.num_engines} is more than the "
                         f"{tc.num_ranks} GPUs (trainer.num_ranks) the layout shares")


def actor_options(slot: Slot, pg) -> dict:
    """Ray actor options that put `slot`'s actor on its bundle's GPU."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"num_cpus": slot.cpus, "num_gpus": slot.gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=slot.bundle)}

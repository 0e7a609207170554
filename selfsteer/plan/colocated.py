"""`selfsteer plan` for placement=colocated: each GPU's memory in each phase of a round.

All roles share every GPU (selfsteer.plan.colocation), so what must fit is a GPU's sum per phase:
  sampling   trainer states (ZeRO-3 shard) + the engine awake (its vLLM budget) [+ reference weights]
  reference  trainer states + the engine asleep [+ the reference's scoring forward]
  training   trainer states, activations and logits + the engine asleep [+ reference weights]
The reference sits on GPU 0 only, so GPU 0 is the fullest. Estimates, like the separate plan's.
"""

from __future__ import annotations

import dataclasses

from selfsteer.plan import memory as gm
from selfsteer.plan.colocation import FRACTIONS

# A sleeping vLLM engine keeps its CUDA context and what lives outside its sleep pool (estimate).
SLEEP_RESIDUAL = 1 * gm.GIB
# vLLM's share of each GPU when colocated: the trainer's states and the reference stay resident.
COLOCATED_UTILIZATION = 0.5
PHASES = ("sampling", "reference", "training")


def colocated_variant(cfg, gpus: int):
    """The same run laid out colocated over `gpus` GPUs: a trainer rank and an engine per GPU."""
    rc = cfg.rollout
    return dataclasses.replace(
        cfg, placement="colocated", async_rounds=False,
        trainer=dataclasses.replace(cfg.trainer, num_ranks=gpus, num_gpus=1),
        rollout=dataclasses.replace(rc, num_engines=gpus, num_gpus=FRACTIONS["rollout"], tensor_parallel_size=1,
                                    num_cpus=min(rc.num_cpus, 2),
                                    gpu_memory_utilization=min(rc.gpu_memory_utilization, COLOCATED_UTILIZATION)),
        reference=dataclasses.replace(cfg.reference, num_gpus=FRACTIONS["reference"],
                                      num_cpus=min(cfg.reference.num_cpus, 2)))


def phase_memory(cfg, shape: gm.ModelShape, gpu_bytes: float, rows: int, width: int) -> dict[str, list[float]]:
    """Bytes on each GPU (index = bundle) in each phase."""
    p = gm.DTYPE_BYTES[cfg.model.dtype]
    tc, rc = cfg.trainer, cfg.rollout
    gpus = tc.num_ranks
    train = gm.trainer_memory(shape, tc, p, rows=tc.micro_batch_size * rows, width=width, packing=tc.packing)
    states = sum(v for k, v in train.items() if k in ("weights", "gradients", "optimizer", "zero buffers"))
    vllm = gm.vllm_budget(shape, p, gpu_bytes, utilization=rc.gpu_memory_utilization, tp=1,
                          max_model_len=rc.max_model_len or shape.max_positions, seq_len=width).per_gpu
    ref_weights = p * shape.params
    ref_forward = sum(gm.forward_memory(shape, p, rows=cfg.reference.micro_batch_size, width=width,
                                        packing=cfg.reference.packing).values())
    out = {phase: [] for phase in PHASES}
    for g in range(gpus):
        engine = g < rc.num_engines
        ref = g == 0
        out["sampling"].append(states + (vllm if engine else 0) + (ref_weights if ref else 0))
        out["reference"].append(states + (SLEEP_RESIDUAL if engine else 0) + (ref_forward if ref else 0))
        out["training"].append(sum(train.values()) + (SLEEP_RESIDUAL if engine else 0) + (ref_weights if ref else 0))
    return out


def busy_gpus(cfg) -> dict[str, int]:
    """GPUs doing work in each phase."""
    return {"sampling": cfg.rollout.num_engines, "reference": 1, "training": cfg.trainer.num_ranks}


def colocated_lines(cfg, shape: gm.ModelShape, gpu_bytes: float, total_gpus: int, rows: int, width: int,
                    bundles: list[dict], slots: list, problems: list) -> tuple[list[str], list]:
    """The colocated plan's lines and problems ((role, reason)); `problems` starts with the placement's."""
    problems = list(problems)
    memory = phase_memory(cfg, shape, gpu_bytes, rows, width)
    rc = cfg.rollout
    budget = gm.vllm_budget(shape, gm.DTYPE_BYTES[cfg.model.dtype], gpu_bytes, utilization=rc.gpu_memory_utilization,
                            tp=1, max_model_len=rc.max_model_len or shape.max_positions, seq_len=width)
    if gpu_bytes and not budget.fits:
        problems.append(("rollout engines", f"vLLM's KV cache at gpu_memory_utilization {rc.gpu_memory_utilization:g} "
                                            f"holds {budget.tokens:,} tokens, less than max_model_len "
                                            f"{budget.max_model_len:,}; lower rollout.max_model_len"))
    on0 = ", ".join(f"{s.label} (GPU {s.gpus:g})" for s in slots if s.bundle == 0)
    lines = [f"colocated: {len(bundles)} bundles {{GPU 1, CPU {bundles[0]['CPU']:g}}} in one placement group; "
             f"bundle 0 holds {on0}; bundles 1-{len(bundles) - 1} the same without the reference",
             f"  vLLM gpu_memory_utilization {cfg.rollout.gpu_memory_utilization:g} while sampling; asleep "
             f"(level 2) {SLEEP_RESIDUAL / gm.GIB:g} GiB while the reference scores and the trainer trains",
             f"{'phase':<11} {'GPUs busy':>9} {'gpu0 GiB':>9} {'others GiB':>10}"]
    busy = busy_gpus(cfg)
    for phase in PHASES:
        per = memory[phase]
        others = max(per[1:]) if len(per) > 1 else 0.0
        lines.append(f"{phase:<11} {busy[phase]:>9} {per[0] / gm.GIB:>9.2f} {others / gm.GIB:>10.2f}")
        for g, used in enumerate(per):
            if gpu_bytes and used > gpu_bytes:
                problems.append((f"GPU {g} while {phase}", f"needs {used / gm.GIB:.1f} GiB, the GPU has "
                                                           f"{gpu_bytes / gm.GIB:.0f} GiB"))
    from selfsteer.plan.timing import round_line

    lines.append(round_line(cfg, shape, train_gpus=cfg.trainer.num_ranks, engines=rc.num_engines, reference_gpus=1,
                            rows=rows))
    peak = max(max(v) for v in memory.values())
    lines.append(f"peak {peak / gm.GIB:.2f} GiB per GPU; GPUs used: {len(bundles)} of "
                 f"{total_gpus} (every GPU holds a trainer rank and an engine)")
    lines += [f"DOES NOT FIT: {role}: {reason}" for role, reason in problems] or \
             ["fits: every GPU's estimate is within its memory in every phase"]
    return lines, problems

"""`selfsteer plan` for placement=colocated: each GPU's memory in each phase of a round.

All roles share every GPU (selfsteer.plan.colocation), so what must fit is a GPU's sum per phase,
in the order a round runs them (online/sso.py):
  sampling   trainer states + the engine awake (its vLLM share) [+ reference weights]
  reference  trainer states + the engine asleep [+ the reference's scoring forward]
  training   trainer states, activations and logits + the engine asleep [+ reference weights]
  sync       trainer states + every bucket packed for CUDA IPC (the whole model, freed once every
             engine has loaded it) + the engine's weights only (two-stage wake: its KV cache comes
             back after the buckets are freed) [+ reference weights]
  save       trainer states + the engine awake + one gathered tensor (save_hf gathers one
             parameter at a time) [+ reference weights]
The reference actor sits on GPU 0 only, so GPU 0 is the fullest; with reference.mode=trainer every
GPU holds a 1/N share of the frozen start model and scores its share of the rows. Estimates, like
the separate plan's.
"""

from __future__ import annotations

import dataclasses

from selfsteer.plan import lora as lm
from selfsteer.plan import memory as gm
from selfsteer.plan.colocation import FRACTIONS
from selfsteer.plan.workload import work as method_work

# A sleeping vLLM engine keeps its CUDA context and what lives outside its sleep pool (estimate).
SLEEP_RESIDUAL = 1 * gm.GIB
# vLLM's share of each GPU when colocated: the trainer's states and the reference stay resident.
COLOCATED_UTILIZATION = 0.5
PHASES = ("sampling", "reference", "training", "sync", "save")


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


def phase_memory(cfg, shape: gm.ModelShape, gpu_bytes: float) -> dict[str, list[float]]:
    """Bytes on each GPU (index = bundle) in each phase."""
    p = gm.DTYPE_BYTES[cfg.model.dtype]
    tc, rc = cfg.trainer, cfg.rollout
    prompt, new = cfg.data.max_prompt_tokens, rc.sampling.max_new_tokens
    w = method_work(cfg)
    mb = tc.micro_batch_size
    train = gm.trainer_memory(shape, tc, p, tokens=w.forward_tokens(mb, prompt, new), split_head=tc.backend == "torch",
                              mask_bytes=gm.packed_mask_bytes(mb * w.contexts, prompt + new * w.rows // w.contexts, p,
                                                              w.packed))
    states = sum(v for k, v in train.items() if k in ("weights", "gradients", "optimizer", "zero buffers", "CUDA context"))
    vllm = gm.vllm_budget(shape, p, gpu_bytes, utilization=rc.gpu_memory_utilization, tp=1,
                          max_model_len=rc.max_model_len or shape.max_positions, seq_len=prompt + new)
    model = p * shape.params
    on_ranks = cfg.reference.mode == "trainer"  # a frozen share on every rank, no reference actor
    ref_resident = gm.reference_share(shape, p, tc) if on_ranks else model + gm.CUDA_CONTEXT
    rows = cfg.reference.micro_batch_size
    if on_ranks:
        ref_forward = sum(lm.reference_forward(cfg, shape, p, w, split_head=tc.backend == "torch").values())
    else:
        ref_forward = sum(gm.forward_memory(shape, p, tokens=w.scoring_tokens(rows, prompt, new, cfg.reference.packing),
                                            mask_bytes=gm.packed_mask_bytes(rows, prompt + new, p,
                                                                            cfg.reference.packing)).values())
    ipc = 2 * gm.bucket_bytes(shape, p, cfg.sync.bucket_mb)  # sync.shm.POOL_SLOTS slots of the largest bucket
    out = {phase: [] for phase in PHASES}
    for g in range(tc.num_ranks):
        engine = g < rc.num_engines
        ref = on_ranks or g == 0
        out["sampling"].append(states + (vllm.per_gpu if engine else 0) + (ref_resident if ref else 0))
        out["reference"].append(states + (SLEEP_RESIDUAL if engine else 0)
                                + ((ref_forward + (ref_resident if on_ranks else 0)) if ref else 0))
        out["training"].append(sum(train.values()) + (SLEEP_RESIDUAL if engine else 0) + (ref_resident if ref else 0))
        out["sync"].append(states + ipc + ((SLEEP_RESIDUAL + vllm.weights) if engine else 0)
                           + (ref_resident if ref else 0))
        out["save"].append(states + gm.largest_tensor(shape, p) + (vllm.per_gpu if engine else 0)
                           + (ref_resident if ref else 0))
    return out


def busy_gpus(cfg) -> dict[str, int]:
    """GPUs doing work in each phase."""
    n = cfg.trainer.num_ranks
    return {"sampling": cfg.rollout.num_engines, "reference": n if cfg.reference.mode == "trainer" else 1,
            "training": n, "sync": n, "save": n}


def colocated_lines(cfg, shape: gm.ModelShape, gpu, host_bytes, total_gpus: int, bundles: list[dict], slots: list,
                    placed) -> tuple[list[str], list]:
    """The colocated plan's lines and problems ((role, reason)); the placement's problems first."""
    from selfsteer.plan import timing
    from selfsteer.plan.notes import host_line, vllm_note, vllm_problem

    problems = list(placed.problems)
    gpu_bytes = gpu.usable_gib * gm.GIB
    p = gm.DTYPE_BYTES[cfg.model.dtype]
    memory = phase_memory(cfg, shape, gpu_bytes)
    rc = cfg.rollout
    width = cfg.data.max_prompt_tokens + rc.sampling.max_new_tokens
    budget = gm.vllm_budget(shape, p, gpu_bytes, utilization=rc.gpu_memory_utilization,
                            tp=1, max_model_len=rc.max_model_len or shape.max_positions, seq_len=width)
    if gpu_bytes and not budget.fits:
        problems.append(("rollout engines", vllm_problem(budget, shape, p, gpu_bytes, rc.gpu_memory_utilization)))
    on0 = ", ".join(f"{s.label} (GPU {s.gpus:g})" for s in slots if s.bundle == 0)
    rest = ("the same without the reference" if any(s.role == "reference" for s in slots)
            else "the same (each rank holds a share of the frozen reference)")
    lines = [f"colocated: {len(bundles)} bundles {{GPU 1, CPU {bundles[0]['CPU']:g}}} in one placement group; "
             f"bundle 0 holds {on0}; bundles 1-{len(bundles) - 1} {rest}",
             f"  vLLM gpu_memory_utilization {rc.gpu_memory_utilization:g} while sampling {vllm_note(budget, width)}; "
             f"asleep (level 2) {SLEEP_RESIDUAL / gm.GIB:g} GiB while the reference scores and the trainer trains",
             f"{'phase':<11} {'GPUs busy':>9} {'gpu0 GiB':>9} {'others GiB':>10}"]
    busy = busy_gpus(cfg)
    for phase in PHASES:
        per = memory[phase]
        others = max(per[1:]) if len(per) > 1 else 0.0
        lines.append(f"{phase:<11} {busy[phase]:>9} {per[0] / gm.GIB:>9.2f} {others / gm.GIB:>10.2f}")
        worst = max(range(len(per)), key=lambda g: per[g])
        if gpu_bytes and per[worst] > gpu_bytes:
            problems.append((f"GPU {worst} while {phase}", f"needs {per[worst] / gm.GIB:.1f} GiB, the GPU has "
                                                           f"{gpu_bytes / gm.GIB:.1f} GiB usable"))
    # Per node: its trainer ranks and engines (and the reference on node 0), each at its loading peak.
    on_ranks = cfg.reference.mode == "trainer"
    per_gpu_host = (gm.host_trainer(shape, p, cfg.trainer, reference=on_ranks)
                    + gm.host_engine(shape, p, 1, rc.backend in ("vllm", "auto")))
    nodes_used = sorted({n for n, _ in placed.where.values()}) or [0]
    per_node = [sum(per_gpu_host for n, _ in placed.where.values() if n == node) for node in nodes_used]
    if not on_ranks:
        per_node[0] += gm.host_reference(shape, p)
    lines.append(host_line(per_node, host_bytes))
    if host_bytes:
        problems += [(f"node{i} host RAM", f"needs {x / gm.GIB:.0f} GiB while loading, the node has "
                                           f"{host_bytes / gm.GIB:.0f}") for i, x in enumerate(per_node) if x > host_bytes]
    seconds = timing.round_seconds(cfg, shape, gpu, method_work(cfg), train_gpus=cfg.trainer.num_ranks,
                                   engines=rc.num_engines, reference_gpus=busy_gpus(cfg)["reference"],
                                   kv_sequences=budget.sequences)
    lines.append(timing.round_line(cfg, seconds, gpu))
    problems += timing.timeout_problems(cfg, seconds)
    peak = max(max(v) for v in memory.values())
    lines.append(f"peak {peak / gm.GIB:.2f} GiB per GPU of {gpu_bytes / gm.GIB:.2f} usable; GPUs used: {len(bundles)} "
                 f"of {total_gpus} (every GPU holds a trainer rank and an engine)")
    lines += [f"DOES NOT FIT: {role}: {reason}" for role, reason in problems] or \
             ["fits: every GPU's estimate is within its memory in every phase, every phase within its timeout"]
    return lines, problems

"""`selfsteer plan` with `model.lora`: what a LoRA policy holds per GPU instead of a trained model.

Pure arithmetic in bytes, beside selfsteer.plan.memory (same symbols: Ψ parameters of the model, p
bytes per element of model.dtype, N trainer ranks). With rank r, a targeted projection of shape
d_in -> d_out gets A [r, d_in] and B [d_out, r]: Ψa = layers · Σ_targets r (d_in + d_out).

- Trainer rank, DeepSpeed: the frozen base pΨ (ZeRO-3 partitions it: pΨ/N; stages 0-2 keep it whole);
  the adapter as ZeRO holds trainable weights (DeepSpeed casts them to the run's dtype): weights
  pΨa, gradients pΨa, optimizer 12Ψa (fp32 master + Adam m, v; 8Ψa in fp32), partitioned per
  stage as in memory.zero_states. ZeRO's buffers stay full size: stage 3 gathers the frozen base's
  layers (min(Ψ, 1e9) parameters live), stages 1-2 allocate their 5e8-element buckets regardless.
- Trainer rank, torch backend: the base pΨ; peft keeps the adapter in float32 (its
  autocast_adapter_dtype), so weights, gradients, AdamW m+v and the all-reduce copy are 4+4+8+4 = 20Ψa.
- Activations: the base's (memory.activations) plus each targeted module's rank-r intermediate
  A·x per token (r·p), for every layer without gradient checkpointing and one layer with it.
- reference.mode=adapter_off: no reference actor or model copy. The trainer rank scores the
  reference with the adapter off, no grad (one layer's activations, logits as the reference's),
  in the reference phase, not at once with training: the rank's peak is its states plus the larger
  of the two; the plan shows training's and any excess of reference scoring over it.
- Sync: only the adapter travels, in the trainer's parameter dtype. A bucket holds at most
  sync.bucket_mb, at least the largest adapter tensor, never more than the whole adapter.
- Engines: an HF engine holds the adapter beside its base (float32: peft's autocast); vLLM
  preallocates max_loras = 1 slot of max_lora_rank (engines/vllm_engine._vllm_lora_rank) for every
  projection it can adapt, inside its gpu_memory_utilization share; counted unsharded over TP (an
  upper bound: tensor parallelism splits one of A, B of each).
"""

from __future__ import annotations

from selfsteer.plan import memory as gm

# selfsteer.training.lora.ARCH_TARGETS' projections (a test checks they agree; no torch import here).
# "All linear layers but the head" (peft all-linear, the other architectures' default) is the same
# set on the dense decoders plan estimates.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # engines/vllm_engine._vllm_lora_rank's sizes
ADAPTER_FP32 = 4  # bytes per adapter element outside DeepSpeed (peft's autocast_adapter_dtype)


def projection_dims(shape: gm.ModelShape) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each decoder-layer projection LoRA can target."""
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def targets(lora_cfg) -> tuple[str, ...]:
    """`model.lora.target_modules`, or the default projections; a name plan cannot size is an error."""
    names = tuple(lora_cfg.target_modules or PROJECTIONS)
    unknown = [n for n in names if n not in PROJECTIONS]
    if unknown:
        raise ValueError(f"model.lora.target_modules: plan sizes the decoder projections {list(PROJECTIONS)}, "
                         f"not {unknown}")
    return names


def adapter_params(shape: gm.ModelShape, rank: int, names) -> int:
    """Ψa: every layer's A [r, d_in] and B [d_out, r] of each targeted projection."""
    dims = projection_dims(shape)
    return shape.layers * sum(rank * (dims[n][0] + dims[n][1]) for n in names)


def largest_adapter_tensor(shape: gm.ModelShape, rank: int, names) -> int:
    """Elements of the largest A or B: rank x the widest targeted dimension."""
    dims = projection_dims(shape)
    return rank * max(max(dims[n]) for n in names)


def adapter_element_bytes(tc, p: int) -> int:
    """The adapter's bytes per element on the trainer, and so in the sync: DeepSpeed casts it to the
    run's dtype; the torch backend keeps peft's float32."""
    return p if tc.backend == "deepspeed" else ADAPTER_FP32


def trainer_states(psi: int, psi_a: int, p: int, tc) -> dict[str, float]:
    """One trainer rank's frozen base, adapter, adapter gradients and optimizer state, and buffers."""
    if tc.backend == "torch":
        a = ADAPTER_FP32
        return {"frozen base": p * psi, "adapter": a * psi_a, "adapter gradients": a * psi_a,
                "adapter optimizer": 2 * a * psi_a, "all-reduce buffer": a * psi_a}
    stage, n = tc.zero_stage, tc.num_ranks
    zero = gm.zero_states(psi_a, p, stage, n)
    out = {"frozen base": p * psi / (n if stage >= 3 else 1), "adapter": zero["weights"],
           "adapter gradients": zero["gradients"], "adapter optimizer": zero["optimizer"]}
    if stage == 3:
        out["zero buffers"] = min(psi, gm.ZERO3_MAX_LIVE) * p + gm.ZERO12_BUCKET * p  # gathered base layers + reduce bucket
    elif stage in (1, 2):
        out["zero buffers"] = 2 * gm.ZERO12_BUCKET * p
    return out


def adapter_activations(shape: gm.ModelShape, rank: int, names, p: int, tokens: int, checkpointing: bool) -> float:
    """Each targeted module's A·x (r per token) kept for backward; one layer's under checkpointing."""
    return (1 if checkpointing else shape.layers) * len(names) * rank * p * tokens


def trainer_memory(shape: gm.ModelShape, cfg, p: int, *, tokens: int, mask_bytes: float, split_head: bool,
                   sync_bytes: float, reference: dict | None) -> tuple[dict[str, float], str]:
    """One LoRA trainer rank's bytes by part, and a note on its reference scoring (adapter_off).

    `reference` is the reference forward's parts (memory.forward_memory without weights and context)
    when the rank scores the reference, else None.
    """
    tc, lora = cfg.trainer, cfg.model.lora
    names = targets(lora)
    psi_a = adapter_params(shape, lora.rank, names)
    out = trainer_states(shape.params, psi_a, p, tc)
    forward = {"activations": gm.activations(shape, p, tokens, tc.gradient_checkpointing)
               + adapter_activations(shape, lora.rank, names, p, tokens, tc.gradient_checkpointing),
               "logits": gm.logits_bytes(shape, p, tokens, split_head=split_head, train=True)}
    if mask_bytes:
        forward["attention mask"] = mask_bytes
    out.update(forward)
    note = ""
    if reference is not None:
        scoring, training = sum(reference.values()), sum(forward.values())
        note = (f"(reference scoring, adapter off: {scoring / gm.GIB:.2f} GiB, in its own phase; "
                f"training's forward {training / gm.GIB:.2f})")
        if scoring > training:
            out["reference scoring excess"] = scoring - training
    if sync_bytes:
        out["sync buffers"] = sync_bytes
    out["CUDA context"] = gm.CUDA_CONTEXT
    return out, note


def sync_bucket_bytes(shape: gm.ModelShape, cfg, p: int) -> float:
    """The largest sync bucket of an adapter-only sync (see the module docstring)."""
    lora = cfg.model.lora
    names = targets(lora)
    e = adapter_element_bytes(cfg.trainer, p)
    whole = adapter_params(shape, lora.rank, names) * e
    return min(max(cfg.sync.bucket_mb * 2 ** 20, largest_adapter_tensor(shape, lora.rank, names) * e), whole)


def vllm_slot_rank(rank: int) -> int:
    return next((s for s in VLLM_LORA_RANKS if s >= rank), rank)


def vllm_slot_bytes(shape: gm.ModelShape, rank: int, p: int) -> float:
    """vLLM's one preallocated LoRA slot (max_loras=1) at max_lora_rank over every projection."""
    return adapter_params(shape, vllm_slot_rank(rank), PROJECTIONS) * p


def vllm_slot(cfg, shape: gm.ModelShape, p: int) -> float:
    """The vLLM engine's LoRA slot for this run (none without model.lora)."""
    return vllm_slot_bytes(shape, cfg.model.lora.rank, p) if cfg.model.lora.enabled else 0.0


def reference_forward(cfg, shape: gm.ModelShape, p: int, work, *, split_head: bool) -> dict[str, float]:
    """reference.mode=adapter_off or trainer: one reference micro-batch's forward on a trainer rank, by
    part (its weights are counted apart: the rank's frozen base, or the frozen copy's share)."""
    rows, prompt, new = cfg.reference.micro_batch_size, cfg.data.max_prompt_tokens, cfg.rollout.sampling.max_new_tokens
    packed = work.packed  # the trainer's packing (trainer.packing), which its reference scoring uses
    out = gm.forward_memory(shape, p, tokens=work.scoring_tokens(rows, prompt, new, packed), split_head=split_head,
                            mask_bytes=gm.packed_mask_bytes(rows, prompt + new, p, packed))
    return {k: v for k, v in out.items() if k not in ("weights", "CUDA context")}


def hf_engine_adapter_bytes(shape: gm.ModelShape, lora_cfg) -> float:
    return adapter_params(shape, lora_cfg.rank, targets(lora_cfg)) * ADAPTER_FP32


def summary(shape: gm.ModelShape, cfg, p: int) -> str:
    """The plan's LoRA line: rank, targets, Ψa, its share of the model, the sync's size, the reference."""
    lora, tc = cfg.model.lora, cfg.trainer
    names = targets(lora)
    psi_a = adapter_params(shape, lora.rank, names)
    e = adapter_element_bytes(tc, p)
    where = ("trainer ranks with the adapter off (no reference actor, no model copy)"
             if cfg.reference.mode == "adapter_off" else "a reference actor holding the start model")
    return (f"lora: rank {lora.rank}, alpha {lora.alpha:g}, {len(names)} projections x {shape.layers} layers "
            f"({', '.join(names)}): adapter {psi_a:,} parameters ({100 * psi_a / shape.params:.2f}% of the model), "
            f"{psi_a * e / 2 ** 20:.1f} MiB a sync ({e} B each); frozen base {p * shape.params / gm.GIB:.2f} GiB; "
            f"reference on the {where}")

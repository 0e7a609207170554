"""Estimated GPU time per round, for `selfsteer plan`, and each phase against its call timeout.

At full length (every response `max_new_tokens`, every row prompt + response tokens), so upper
bounds; real responses are shorter. Training and reference scoring are compute-bound at the card's
bf16 peak times `MFU`. A decode step reads the weights once and every running sequence's KV cache
(the prompt plus the tokens so far), at the card's HBM speed, or is compute-bound if that is slower.
Each phase is one Ray call bounded by `ray.call_timeout_s` (rollout generate, reference score,
trainer train), so an estimate above it ends a full-length run in a TimeoutError: the plan says so.
"""

from __future__ import annotations

import math

MFU = 0.4


def decode_batch(cfg, kv_sequences: float, requests_per_engine: int) -> int:
    """Sequences an engine runs at once: its max_batch_size, what its KV cache holds, what it was given."""
    return max(1, min(cfg.rollout.max_batch_size, int(kv_sequences), requests_per_engine))


def round_seconds(cfg, shape, card, work, *, train_gpus: int, engines: int, reference_gpus: int,
                  kv_sequences: float) -> dict[str, float]:
    """Seconds per phase of one round (sampling, reference, training), each on the GPUs it runs on."""
    from selfsteer.plan import memory as gm

    p = gm.DTYPE_BYTES[cfg.model.dtype]
    tp = cfg.rollout.tensor_parallel_size
    prompts, prompt, new = cfg.data.prompts_per_round, cfg.data.max_prompt_tokens, cfg.rollout.sampling.max_new_tokens
    per_gpu = card.peak_tflops * 1e12 * MFU
    requests = math.ceil(prompts * work.responses_per_prompt / engines)
    batch = decode_batch(cfg, kv_sequences, requests)
    waves = math.ceil(requests / batch)
    kv = shape.kv_bytes_per_token(p, tp)
    # One wave: new steps; step t reads the weights (their TP share) and batch x (prompt + t) tokens of KV.
    wave_bytes = new * p * shape.params / tp + batch * kv * (new * prompt + new * (new + 1) / 2)
    wave_flops = 2 * shape.params / tp * batch * new
    sampling = waves * max(wave_bytes / (card.hbm_tbps * 1e12), wave_flops / per_gpu)
    scored = prompts * work.scoring_tokens(work.rows, prompt, new, cfg.reference.packing)  # every example's rows
    trained = prompts * work.forward_tokens(1, prompt, new)
    recompute = 2 if cfg.trainer.gradient_checkpointing else 0
    # Backward is 4Ψ per token: 2Ψ for the activations' gradients, 2Ψ for the weights'. A LoRA
    # policy's base is frozen, so only the first (the adapter's own gradients are rank-r small).
    backward = 2 if cfg.model.lora.enabled else 4
    return {"sampling": sampling, "reference": 2 * shape.params * scored / (per_gpu * reference_gpus),
            "training": (2 + backward + recompute) * shape.params * trained * cfg.trainer.epochs_per_round / (per_gpu * train_gpus)}


def timeout_problems(cfg, seconds: dict[str, float]) -> list[tuple[str, str]]:
    """Phases whose estimate is above `ray.call_timeout_s`, with the value that would do."""
    limit = cfg.ray.call_timeout_s
    over = {k: v for k, v in seconds.items() if v > limit}
    if not over:
        return []
    need = 600 * math.ceil(max(over.values()) * 1.25 / 600)  # a quarter more, in 10-minute steps
    return [(f"{phase} phase", f"estimated {v / 60:.0f} min at full length, above ray.call_timeout_s={limit:g} s "
                               f"(one call); raise ray.call_timeout_s to at least {need} or lower "
                               f"data.prompts_per_round") for phase, v in over.items()]


def round_line(cfg, seconds: dict[str, float], card) -> str:
    return (f"estimated GPU time per round (at full length; {card.name}: {card.peak_tflops:g} TFLOP/s x {MFU:g}, "
            f"{card.hbm_tbps:g} TB/s, KV reads counted): "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
            + f", in all {sum(seconds.values()) / 60:.0f} min; each phase is one call under ray.call_timeout_s "
              f"{cfg.ray.call_timeout_s:g} s")

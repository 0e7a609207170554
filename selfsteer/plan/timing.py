"""Estimated GPU time per round, for `selfsteer plan` (estimates until a GPU run measures them).

At full length (every response `max_new_tokens`, every row prompt + response tokens), so upper
bounds; real responses are shorter. Assumed hardware: A100-class bf16 peak at `MFU` utilization
for training and reference scoring (compute-bound), and HBM bandwidth for decoding (each decode
step of a batch reads the weights once; KV reads are left out).
"""

from __future__ import annotations

import math

PEAK_TFLOPS = 312.0  # A100 bf16 dense
MFU = 0.4
HBM_TBPS = 2.0


def round_seconds(cfg, shape, *, train_gpus: int, engines: int, reference_gpus: int, rows: int) -> dict[str, float]:
    """Seconds per phase of one round (sampling, reference, training), each on the GPUs it runs on."""
    from selfsteer.algorithms.registry import method
    from selfsteer.plan import memory as gm

    p = gm.DTYPE_BYTES[cfg.model.dtype]
    prompts, new = cfg.data.prompts_per_round, cfg.rollout.sampling.max_new_tokens
    tokens = prompts * rows * (cfg.data.max_prompt_tokens + new)  # scored (response, context) rows
    per_gpu = PEAK_TFLOPS * 1e12 * MFU
    recompute = 2 if cfg.trainer.gradient_checkpointing else 0
    waves = math.ceil(prompts * method(cfg.algo).generations(cfg) / engines / cfg.rollout.max_batch_size)
    return {"sampling": waves * new * p * shape.params / (HBM_TBPS * 1e12),
            "reference": 2 * shape.params * tokens / (per_gpu * reference_gpus),
            "training": (6 + recompute) * shape.params * tokens * cfg.trainer.epochs_per_round / (per_gpu * train_gpus)}


def round_line(cfg, shape, *, train_gpus: int, engines: int, reference_gpus: int, rows: int) -> str:
    t = round_seconds(cfg, shape, train_gpus=train_gpus, engines=engines, reference_gpus=reference_gpus, rows=rows)
    return (f"estimated GPU time per round (at full length; {PEAK_TFLOPS:g} TFLOP/s x {MFU:g}, {HBM_TBPS:g} TB/s): "
            + ", ".join(f"{k} {v / 60:.0f} min" for k, v in t.items()) + f", in all {sum(t.values()) / 60:.0f} min")

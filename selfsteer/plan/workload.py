"""What one round asks of the hardware, per method, as the code does it: rows, contexts, samples, tokens.

The counts follow the round modules (selfsteer.online.*) and the trainer's `_loss` (every row of a
micro-batch in one forward pass, packed unless SePO's token masks force padded rows); rows and
samples come from the method registry.
Also the GPU cards `selfsteer plan --gpu NAME` knows: memory PyTorch reports, bf16 peak, HBM speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024 ** 3

# name -> (GiB that torch.cuda.get_device_properties().total_memory reports, dense bf16 TFLOP/s, HBM TB/s).
# A card sold as "80 GB" gives a process 79.1 GiB, before each process's CUDA context (CUDA_CONTEXT).
GPUS = {
    "h100-80gb": (79.11, 989.0, 3.35),
    "h200-141gb": (139.8, 989.0, 4.8),
    "a100-80gb": (79.15, 312.0, 2.04),
    "a100-40gb": (39.39, 312.0, 1.56),
}
DEFAULT_GPU = "h100-80gb"


@dataclass(frozen=True)
class Card:
    name: str
    usable_gib: float
    peak_tflops: float
    hbm_tbps: float


def card(name: str | None, usable_gib: float | None = None) -> Card:
    """The card by name (default h100-80gb); `usable_gib` overrides its memory (a measured figure)."""
    key = (name or DEFAULT_GPU).lower()
    if key not in GPUS:
        raise ValueError(f"--gpu {name!r} is not a known card; known: {', '.join(sorted(GPUS))} "
                         f"(or give --gpu-memory-gib with the usable GiB)")
    gib, tflops, tbps = GPUS[key]
    return Card(key, usable_gib if usable_gib is not None else gib, tflops, tbps)


@dataclass(frozen=True)
class Work:
    """Per prompt: sampled responses; per training example: (response, context) rows and distinct contexts."""

    responses_per_prompt: int
    rows: int
    contexts: int
    packed: bool  # the trainer packs a micro-batch's rows (contexts once) rather than padding each row

    def forward_tokens(self, examples: int, prompt: int, new: int) -> int:
        """Tokens in one trainer forward of `examples` examples at full length."""
        if self.packed:
            return examples * (self.contexts * prompt + self.rows * new)
        return examples * self.rows * (prompt + new)

    def scoring_tokens(self, rows: int, prompt: int, new: int, packed: bool) -> int:
        """Tokens in one reference micro-batch of `rows` rows (rows sharing a context sit together)."""
        if not packed:
            return rows * (prompt + new)
        return math.ceil(rows * self.contexts / self.rows) * prompt + rows * new


def work(cfg) -> Work:
    """The method's counts: rows and samples from its registry spec (selfsteer.algorithms.registry), the
    distinct contexts of a training example from its rows (SSO v1 scores under x, x+, x-; v2 under x+,
    x-; every other method under x alone)."""
    from selfsteer.algorithms.registry import method

    spec = method(cfg.algo)
    contexts = (3 if cfg.loss.variant == "v1" else 2) if cfg.algo == "sso" else 1
    packed = cfg.trainer.packing and cfg.algo != "sepo"  # SePO's token masks: padded rows (score_sequences)
    return Work(spec.generations(cfg), spec.rows(cfg), contexts, packed)

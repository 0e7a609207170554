"""The training-backend interface and the optimizer/scheduler recipe both backends share."""

from __future__ import annotations

import contextlib
import importlib
import math
from typing import ContextManager, Iterator, Protocol

import torch

BACKENDS = {
    "deepspeed": "selfsteer.training.deepspeed_backend:DeepSpeedBackend",
    "torch": "selfsteer.training.torch_backend:TorchBackend",
}


class TrainBackend(Protocol):
    """What a trainer rank needs: forward, accumulate, step at a boundary, and full weights."""

    module: torch.nn.Module  # the HF model (for names and forward)

    def forward(self, **batch) -> torch.Tensor: ...

    def backward(self, loss: torch.Tensor, *, boundary: bool) -> None:
        """Accumulate grads of `loss` (already scaled by the caller); `boundary` ends the group."""

    def step(self) -> dict[str, float]:
        """Optimizer + scheduler step after a boundary backward; returns the pre-clipping grad_norm
        and the lr this step applied (read before the scheduler advances)."""

    def full_parameters(self, params: list[torch.nn.Parameter]) -> ContextManager[None]:
        """Inside the context every param in `params` holds its full value (ZeRO-3 gathers)."""

    def save_state(self, directory: str, tag: str) -> None:
        """Everything needed to continue training (weights, optimizer, scheduler). All ranks call."""

    def load_state(self, directory: str, tag: str) -> None: ...


def make_optimizer_and_scheduler(model: torch.nn.Module, cfg, total_steps: int | list[int]):
    """AdamW with decoupled weight decay off for norms/biases, and warmup + cosine/constant.

    `total_steps` may be a list of segment lengths (a run extended with `--resume rounds=N` under
    trainer.extend_schedule=restart): each segment has its own warmup and decay. Past the last
    segment the rate stays at that segment's end value.
    """
    import functools

    from torch.optim.lr_scheduler import LambdaLR

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # ds_shape: under zero.Init a parameter is an empty placeholder; its real shape decides.
            (no_decay if len(getattr(p, "ds_shape", p.shape)) < 2 else decay).append(p)
    # An empty group is left out (a LoRA adapter has only matrices): ZeRO drops it, and the
    # scheduler's per-group lambdas would then outnumber the optimizer's groups.
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas))
    segments = [max(int(n), 1) for n in (total_steps if isinstance(total_steps, (list, tuple)) else [total_steps])]
    # A partial, not a closure: LambdaLR's state_dict then carries no segments, so a resumed run's
    # new segments are not overwritten by the checkpoint's.
    factor = functools.partial(lr_factor, segments=tuple(segments), warmup_ratio=cfg.warmup_ratio,
                               cosine=cfg.lr_scheduler == "cosine")
    return optimizer, LambdaLR(optimizer, factor)


def lr_factor(step: int, *, segments: tuple[int, ...], warmup_ratio: float, cosine: bool) -> float:
    """Multiplier of trainer.lr at optimizer step `step` (transformers' warmup + cosine/constant per segment)."""
    start = 0
    for i, length in enumerate(segments):
        if step < start + length or i == len(segments) - 1:
            local = min(step - start, length)
            warmup = int(round(warmup_ratio * length))
            if local < warmup:
                return local / max(1, warmup)
            if not cosine:
                return 1.0
            progress = (local - warmup) / max(1, length - warmup)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        start += length
    raise AssertionError("unreachable")


def make_train_backend(name: str, model: torch.nn.Module, cfg, *, total_steps: int, device: str,
                       dtype: torch.dtype) -> TrainBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown trainer backend {name!r}; valid: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(model, cfg, total_steps=total_steps, device=device, dtype=dtype)


@contextlib.contextmanager
def nullcontext_params(_params) -> Iterator[None]:
    yield

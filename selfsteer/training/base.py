"""The training-backend interface and the optimizer/scheduler recipe both backends share."""

from __future__ import annotations

import contextlib
import importlib
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


def make_optimizer_and_scheduler(model: torch.nn.Module, cfg, total_steps: int):
    """AdamW with decoupled weight decay off for norms/biases, and warmup + cosine/constant."""
    from transformers import get_scheduler

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas))
    warmup = int(round(cfg.warmup_ratio * total_steps))
    name = "cosine" if cfg.lr_scheduler == "cosine" else "constant_with_warmup"
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1))
    return optimizer, scheduler


def make_train_backend(name: str, model: torch.nn.Module, cfg, *, total_steps: int, device: str,
                       dtype: torch.dtype) -> TrainBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown trainer backend {name!r}; valid: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(model, cfg, total_steps=total_steps, device=device, dtype=dtype)


@contextlib.contextmanager
def nullcontext_params(_params) -> Iterator[None]:
    yield

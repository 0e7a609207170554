"""Plain torch training: full replicas, gradients averaged with one flat all-reduce per step.

The dependency-light path (no DeepSpeed) for debugging and for small models.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from selfsteer.training.base import make_optimizer_and_scheduler, nullcontext_params


class TorchBackend:
    def __init__(self, model: torch.nn.Module, cfg, *, total_steps: int, device: str, dtype: torch.dtype):
        self.module = model.to(device)
        self.module.train()
        self.optimizer, self.scheduler = make_optimizer_and_scheduler(self.module, cfg, total_steps)
        self.grad_clip = cfg.grad_clip
        self.steps = 0
        self._params = [p for p in self.module.parameters() if p.requires_grad]

    def forward(self, **batch):
        return self.module(**batch)

    def backward(self, loss: torch.Tensor, *, boundary: bool) -> None:
        loss.backward()

    def step(self) -> dict[str, float]:
        if dist.is_initialized() and dist.get_world_size() > 1:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            for p, g in zip(self._params, torch._utils._unflatten_dense_tensors(flat, grads)):
                p.grad = g
        norm = torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return {"grad_norm": float(norm), "lr": float(self.scheduler.get_last_lr()[0])}

    def full_parameters(self, params):
        return nullcontext_params(params)

    def state_for_checkpoint(self) -> dict:
        return {"global_steps": self.steps}

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
        lr = float(self.optimizer.param_groups[0]["lr"])  # the lr this step applies, before the scheduler moves it
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return {"grad_norm": float(norm), "lr": lr}

    def full_parameters(self, params):
        return nullcontext_params(params)

    def save_state(self, directory: str, tag: str) -> None:
        """Rank 0 writes weights (safetensors) and optimizer/scheduler state; replicas are identical."""
        import os

        from safetensors.torch import save_file

        if dist.is_initialized() and dist.get_rank() != 0:
            return
        target = os.path.join(directory, tag)
        os.makedirs(target, exist_ok=True)
        state = self.module.state_dict()
        trainable = {n for n, p in self.module.named_parameters() if p.requires_grad}
        if len(trainable) < len(dict(self.module.named_parameters())):
            # LoRA: the frozen base is the run's model directory; only the adapter is state.
            state = {k: v for k, v in state.items() if k in trainable}
        save_file({k: v.detach().contiguous() for k, v in state.items()
                   if k != "lm_head.weight" or not self.module.config.tie_word_embeddings},
                  os.path.join(target, "model.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "steps": self.steps}, os.path.join(target, "optimizer.pt"))

    def load_state(self, directory: str, tag: str) -> None:
        import os

        from safetensors.torch import load_file

        target = os.path.join(directory, tag)
        self.module.load_state_dict(load_file(os.path.join(target, "model.safetensors")), strict=False)
        from selfsteer.training.safe_state import safe_load

        # Our own optimizer state (tensors and numbers): weights-only, a planted object is refused by name.
        state = safe_load(os.path.join(target, "optimizer.pt"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state["steps"]

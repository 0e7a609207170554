"""DeepSpeed ZeRO (stage 0-3) engine; the same code on CPU (gloo) and GPU (NCCL)."""

from __future__ import annotations

import torch

from selfsteer.training.base import make_optimizer_and_scheduler, nullcontext_params


def ds_config(cfg, world: int, dtype: torch.dtype) -> dict:
    """The engine's DeepSpeed config (also what partitioned_loading hands transformers)."""
    return {
        # Accumulation boundaries are set explicitly per round (see backward); these only
        # satisfy DeepSpeed's batch-size bookkeeping.
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def partitioned_loading(cfg, dtype: torch.dtype):
    """ZeRO-3: make `from_pretrained` build the model under `deepspeed.zero.Init`, so each rank holds
    only its partition, in host RAM and on its device (issue 23; transformers then reads the checkpoint
    on rank 0 and scatters it one layer at a time). Returns the HfDeepSpeedConfig, which must stay
    referenced while the model loads (transformers keeps only a weak reference); None below stage 3.
    Call after the process group exists."""
    if cfg.zero_stage != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return_freed_host_memory()

    return HfDeepSpeedConfig(ds_config(cfg, torch.distributed.get_world_size(), dtype))


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)


def return_freed_host_memory(threshold: int = 1 << 20) -> bool:
    """Serve host allocations of `threshold` bytes or more by mmap, so freeing them returns the pages.

    glibc raises its mmap threshold to the size of each freed mmapped block (up to 32 MiB), after
    which full-size tensors that zero.Init builds and partitions, and that each gather unpartitions,
    come from the heap; freed between the partitions, they stay in the process's RSS (measured on a
    0.27B CPU twin: 1.10x the model's size held after load against 0.50x live; with this, 0.50x;
    benchmarks/memory.py). A fixed threshold also stops the dynamic adjustment. No-op without glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.gnu_get_libc_version and libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


class DeepSpeedBackend:
    def __init__(self, model: torch.nn.Module, cfg, *, total_steps: int, device: str, dtype: torch.dtype):
        import deepspeed

        self._deepspeed = deepspeed
        optimizer, scheduler = make_optimizer_and_scheduler(model, cfg, total_steps)
        config = ds_config(cfg, torch.distributed.get_world_size(), dtype)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
        self.module = self.engine.module
        self.zero_stage = cfg.zero_stage
        # DeepSpeed's own engine unpickles whatever the files hold (weights_only=False): ours loads
        # weights-only with the exact allow-list of its state classes (issue #26 item 7).
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

        from selfsteer.training.safe_state import make_safe_checkpoint_engine

        if type(self.engine.checkpoint_engine) is not TorchCheckpointEngine:
            raise RuntimeError(f"unexpected DeepSpeed checkpoint engine {type(self.engine.checkpoint_engine).__name__}: "
                               f"selfsteer loads trainer state only through a weights-only torch engine")
        self.engine.checkpoint_engine = make_safe_checkpoint_engine(self.engine._config)

    def forward(self, **batch):
        return self.engine(**batch)

    def backward(self, loss: torch.Tensor, *, boundary: bool) -> None:
        # Must be set before backward: ZeRO reduces gradients during the boundary backward.
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> dict[str, float]:
        """The step's lr (the one the optimizer applies, before the scheduler moves it) and its
        pre-clipping gradient norm: ZeRO reports it; at stage 0 DeepSpeed clips without keeping
        the norm, so we take it from the (already all-reduced) gradients first."""
        lr = float(self.engine.get_lr()[0])
        own_norm = _grad_norm(self.module.parameters()) if self.zero_stage == 0 else None
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            norm = own_norm
        return {"grad_norm": float(norm) if norm is not None else float("nan"), "lr": lr}

    def full_parameters(self, params):
        if self.zero_stage == 3:
            return self._deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        return nullcontext_params(params)

    def save_state(self, directory: str, tag: str) -> None:
        """Optimizer, scheduler and (partitioned) weights in DeepSpeed's own checkpoint format."""
        self.engine.save_checkpoint(directory, tag=tag)

    def load_state(self, directory: str, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")


def _grad_norm(params) -> float | None:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else None

"""Process-level settings every actor applies first: device, dtype, CPU threads."""

from __future__ import annotations

import os


def resolve_device(device: str) -> str:
    """`auto` means CUDA where this process can see a GPU, else CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was configured but this process sees no CUDA device")
    return device


def gpu_index(assigned: list, cuda_visible: str | None) -> int:
    """This process's CUDA device index for the GPU Ray assigned it (`assigned`: Ray's GPU ids).

    Ray normally sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so the index is their position in
    it (0); under RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES every GPU stays visible and the index is
    the GPU's own id, or its position in a CUDA_VISIBLE_DEVICES the user set.
    """
    if not assigned:
        return 0
    gpu = str(assigned[0])
    visible = [v.strip() for v in cuda_visible.split(",")] if cuda_visible else []
    if gpu in visible:
        return visible.index(gpu)
    if visible:
        raise RuntimeError(f"Ray assigned GPU {gpu}, which CUDA_VISIBLE_DEVICES={cuda_visible!r} does not list")
    return int(gpu)


def bind_ray_gpu() -> int:
    """Make the GPU Ray assigned to this actor the current CUDA device; returns its index."""
    import ray
    import torch

    index = gpu_index(ray.get_runtime_context().get_accelerator_ids().get("GPU", []),
                      os.environ.get("CUDA_VISIBLE_DEVICES"))
    torch.cuda.set_device(index)
    return index


def ray_device_index() -> int | None:
    """The CUDA device index of the GPU Ray assigned this actor (`gpu_index`), without binding it; None
    outside a Ray actor or without an assigned GPU (the caller keeps its current device)."""
    import ray

    if not ray.is_initialized():
        return None
    assigned = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    return gpu_index(assigned, os.environ.get("CUDA_VISIBLE_DEVICES")) if assigned else None


def visible_devices(assigned: list, cuda_visible: str | None) -> str | None:
    """CUDA_VISIBLE_DEVICES for a process that starts its own GPU workers (vLLM) on the GPUs Ray
    assigned: under RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES every GPU is visible and the workers
    would take device 0. None where nothing needs setting (no GPU assigned, or Ray set it already)."""
    if not assigned:
        return None
    ids = [str(a) for a in assigned]
    visible = [v.strip() for v in cuda_visible.split(",")] if cuda_visible else []
    if visible == ids:
        return None
    missing = [g for g in ids if visible and g not in visible]
    if missing:
        raise RuntimeError(f"Ray assigned GPU {missing[0]}, which CUDA_VISIBLE_DEVICES={cuda_visible!r} does not list")
    return ",".join(ids)


def attention_implementation(device: str, dtype) -> str | None:
    """"flash_attention_2" where it can run (flash_attn imports, CUDA, a 16-bit dtype), else None
    (the model's default, SDPA). Flash-attention takes packed rows as position ids (varlen)."""
    return attention_choice(device, dtype)[0]


def attention_choice(device: str, dtype) -> tuple[str | None, str | None]:
    """(`attention_implementation`, why flash-attention was not taken where it could have run: on
    CUDA with a 16-bit dtype, a flash_attn that does not import; else None)."""
    import torch

    if not str(device).startswith("cuda") or dtype not in (torch.float16, torch.bfloat16):
        return None, None
    try:
        import flash_attn  # noqa: F401
    except Exception as exc:  # ImportError, or a wheel built for another torch/CUDA
        return None, f"flash_attn does not import ({type(exc).__name__}: {exc}); using SDPA"
    return "flash_attention_2", None


def resolve_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def limit_threads(num_threads: int) -> None:
    """Two CPU cores are shared by every role; oversubscription costs more than it gives."""
    import torch

    if num_threads > 0:
        os.environ.setdefault("OMP_NUM_THREADS", str(num_threads))
        torch.set_num_threads(num_threads)


# What `quiet_libraries` sets in the driver; every actor gets the driver's values (on a cluster the
# actors do not inherit the driver's environment).
QUIET_KEYS = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "DS_ACCELERATOR")


def actor_env(torch_threads: int, extra: dict | None = None) -> dict:
    """runtime_env env_vars shared by all roles (threads, quiet tokenizers and libraries)."""
    env = {"OMP_NUM_THREADS": str(max(torch_threads, 1)), "TOKENIZERS_PARALLELISM": "false"}
    env.update({k: os.environ[k] for k in QUIET_KEYS if k in os.environ})
    env.update(extra or {})
    return env


def quiet_libraries(cfg) -> dict[str, str]:
    """Keep library chatter out of the round lines, in the driver and (through `actor_env`) every actor.

    transformers' and datasets' own bars (loading weights, writing shards, generating a split) go
    unless `library_progress_bars`; DeepSpeed is told it runs on CPU when every role does (else it
    warns on every start that it found no GPU). A variable the user set already is kept.
    """
    wanted = {}
    if not cfg.library_progress_bars:
        wanted.update(HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    if all(d == "cpu" for d in (cfg.trainer.device, cfg.rollout.device, cfg.reference.device)):
        wanted["DS_ACCELERATOR"] = "cpu"
    for k, v in wanted.items():
        os.environ.setdefault(k, v)
    if not cfg.library_progress_bars:  # read at import: already-imported libraries are told directly
        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    return {k: os.environ[k] for k in wanted}


def release_device_cache() -> None:
    """Between phases: hand PyTorch's cached CUDA blocks (and closed IPC handles) back to the driver,
    so the process sharing the GPU next can have them (issue 23; verl and OpenRLHF do the same). A
    no-op without CUDA."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()

"""Lines of `selfsteer plan` shared by both layouts: vLLM's share in parts, why it cannot start, host RAM."""

from __future__ import annotations

from typing import Optional

from selfsteer.plan import memory as gm


def vllm_note(budget: gm.VLLMBudget, width: int) -> str:
    """vLLM's share split into its parts; a KV cache that does not fit is said so, never a negative size."""
    head = f"= weights {budget.weights / gm.GIB:.2f} + " + (f"LoRA slot {budget.lora_slot / gm.GIB:.2f} + "
                                                             if budget.lora_slot else "") \
        + f"reserve {budget.reserve / gm.GIB:.2f} + "
    if budget.kv_cache <= 0:
        return head + f"KV cache: none (the share is {-budget.kv_cache / gm.GIB:.2f} GiB short of weights + reserve)"
    return head + (f"KV cache {budget.kv_cache / gm.GIB:.2f}: {budget.tokens:,} tokens at "
                   f"{budget.kv_bytes_per_token:,.0f} B, max_model_len {budget.max_model_len:,}, "
                   f"{budget.sequences:.0f} x {width}-token sequences")


def vllm_problem(budget: gm.VLLMBudget, shape: gm.ModelShape, p: int, gpu_bytes: float, utilization: float) -> str:
    """Why vLLM cannot start, and what would: the max_model_len its cache holds, or the share it needs."""
    if budget.kv_cache <= 0:
        need = (budget.weights + budget.lora_slot + budget.reserve + budget.max_model_len * budget.kv_bytes_per_token) / gpu_bytes
        fix = (f"set rollout.gpu_memory_utilization >= {need:.2f}" if need <= 0.95 else
               f"one max_model_len sequence needs {need:.2f} x the GPU: raise rollout.tensor_parallel_size")
        return f"vLLM's share ({utilization:g} x GPU) does not hold its weights and reserve; {fix}"
    return (f"vLLM's KV cache holds {budget.tokens:,} tokens, less than max_model_len {budget.max_model_len:,}; "
            f"set rollout.max_model_len <= {budget.tokens:,} or raise tensor_parallel_size")


def host_line(per_node: list[float], host_bytes: Optional[float]) -> str:
    worst = max(per_node) if per_node else 0.0
    return (f"host RAM per node at load: up to {worst / gm.GIB:.0f} GiB ("
            + ", ".join(f"node{i} {x / gm.GIB:.0f}" for i, x in enumerate(per_node) if x) + ")"
            + (f" of {host_bytes / gm.GIB:.0f} GiB" if host_bytes else " (not checked: --host-memory-gib)"))

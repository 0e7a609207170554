"""Reference scoring on the trainer ranks (reference.mode=trainer or adapter_off): data-parallel
under ZeRO-3, with different rows per rank and the same number of forwards.

A ZeRO-3 forward gathers each layer's parameters from every rank, so the ranks must run their
forwards in lockstep, but not on the same rows. Each rank scores its own share of the rows (the
throughput of all the trainer GPUs, not of one), counts its forward calls, and the ranks with
fewer calls run one-token forwards until every rank has made as many as the busiest one.
"""

from __future__ import annotations

from typing import Callable

import torch


def load_frozen(model_path: str, tc, dtype: torch.dtype, *, device, trust_remote_code: bool = False, **model_kwargs):
    """reference.mode=trainer: the start model, frozen, on this trainer rank. Under ZeRO-3 it is
    partitioned like the policy (the sliced load) and wrapped in DeepSpeed's inference engine, whose
    forward gathers one layer at a time: a 1/N share per rank instead of a whole copy on a
    reference GPU. Otherwise a whole copy on the rank's device. Returns (forward, keep, fallback)
    as training.zero3_load.load_for_training does."""
    from selfsteer.training.deepspeed_backend import ds_config
    from selfsteer.training.zero3_load import load_for_training

    model, keep, why = load_for_training(model_path, tc, dtype, trust_remote_code=trust_remote_code, **model_kwargs)
    model.requires_grad_(False)
    model.config.use_cache = False
    if tc.backend == "deepspeed" and tc.zero_stage == 3:
        import deepspeed

        engine, *_ = deepspeed.initialize(model=model, config=ds_config(tc, torch.distributed.get_world_size(), dtype))
        engine.eval()
        return engine, keep, why
    return model.to(device).eval(), keep, why


class CountedForward:
    """`forward` that counts its calls."""

    def __init__(self, forward: Callable):
        self.forward, self.calls = forward, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.forward(*args, **kwargs)


def match_forward_calls(counted: CountedForward, *, pad_id: int, device, group=None) -> int:
    """Run one-token forwards until this rank has made as many calls as the busiest rank of
    `group`; returns how many it ran. Call it on every rank, in the same state (eval mode, the
    same adapter switched on or off) as the real forwards, so every rank gathers the same layers."""
    import torch.distributed as dist

    most = torch.tensor([counted.calls], dtype=torch.int64, device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX, group=group)
    extra = int(most.item()) - counted.calls
    ids = torch.tensor([[pad_id]], dtype=torch.long, device=device)
    with torch.no_grad():
        for _ in range(extra):
            counted.forward(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return extra


def frozen_scores(forward: Callable, contexts: list[list[int]], responses: list[list[int]], *, per_token: bool,
                  pad_id: int, device, micro_batch_size: int, packed: bool, mask_dtype,
                  split_head: bool, varlen: bool, lockstep: bool = False) -> tuple[list, list]:
    """A frozen model's log-probs of this rank's rows (none is fine): (sums, counts) per row, or with
    `per_token` (per-token log-probs per row, []). `lockstep` (ZeRO-3): then matched across ranks.
    The caller sets eval mode (and the adapter's state)."""
    from selfsteer.algorithms.logprobs import score_sequences, token_logprobs

    # Lockstep means a DeepSpeed engine, only ever called whole (split_head is off), so every forward
    # passes through the counter.
    counted = CountedForward(forward) if lockstep else forward
    with torch.no_grad():
        if not contexts:
            out = ([], [])
        elif per_token:
            out = (token_logprobs(counted, contexts, responses, pad_id=pad_id, device=device,
                                  micro_batch_size=micro_batch_size, split_head=split_head), [])
        else:
            sums, counts = score_sequences(counted, contexts, responses, pad_id=pad_id, device=device,
                                           micro_batch_size=micro_batch_size, packed=packed, mask_dtype=mask_dtype,
                                           split_head=split_head, varlen=varlen)
            out = (sums.tolist(), counts.tolist())
    if lockstep:
        match_forward_calls(counted, pad_id=pad_id, device=device)
    return out

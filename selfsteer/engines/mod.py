"""Multi-objective decoding (SIPO's MOD, docs/concepts/sipo.md §2) inside the HF rollout backend.

Greedy decoding on z = w·z_A + (1-w)·z_B: `generate` runs policy A, and a logits processor
steps policy B in lockstep on the same tokens with its own KV cache, then fuses the logits.
vLLM has no hook for this: its logits processors see one model's logits and cannot run a second
model per step, and a fused two-model decode is not part of its API, so SIPO runs on `hf` engines.
"""

from __future__ import annotations

import inspect
from typing import Iterable

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from selfsteer.algorithms.sipo import fuse_logits
from selfsteer.engines.base import Generation
from selfsteer.engines.hf_engine import HFBackend


class FusedPolicy(LogitsProcessor):
    """Replace A's next-token logits by fuse_logits(A, B, weight), B stepped with its own cache.

    `prompt_mask` is the left-padded prompts' attention mask; generated tokens extend it with
    ones (rows that already ended keep receiving pad tokens, as they do in A).
    """

    def __init__(self, model_b, weight: float, prompt_mask: torch.Tensor):
        self.model_b, self.weight, self.mask = model_b, weight, prompt_mask
        self.cache, self.seen = None, 0
        # transformers 5.x renamed the KV-cache argument and output `past_key_values` -> `cache` (the old
        # name warns on every step); older releases (>= 4.48 is supported) only know the old one.
        self.cache_arg = "cache" if "cache" in inspect.signature(model_b.forward).parameters else "past_key_values"

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        new = input_ids[:, self.seen:]
        if self.seen:
            self.mask = torch.cat([self.mask, self.mask.new_ones(new.shape)], dim=1)
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -new.shape[1]:]
        out = self.model_b(input_ids=new, attention_mask=self.mask, position_ids=positions,
                           **{self.cache_arg: self.cache}, use_cache=True)
        self.cache, self.seen = getattr(out, self.cache_arg), input_ids.shape[1]
        fused = fuse_logits(scores, out.logits[:, -1, :], self.weight)
        full = torch.full_like(scores, float("-inf"))  # a token outside B's vocabulary is never chosen
        full[:, :fused.shape[-1]] = fused.to(scores.dtype)
        return full


class MODBackend(HFBackend):
    """An HF backend holding a second policy (B) for MOD; A is the usual synced model."""

    def __init__(self, model_path: str, **kwargs):
        super().__init__(model_path, **kwargs)
        self.model_b = None

    def load_policy_b(self, model_path: str) -> None:
        from transformers import AutoModelForCausalLM

        self.model_b = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.model.dtype).to(self.device).eval()

    def load_weights_b(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        from selfsteer.sync.buckets import copy_named

        copy_named(self.model_b, named_tensors, "policy B")

    def named_parameters_b(self):
        return self.model_b.named_parameters()

    @torch.no_grad()
    def generate_mod(self, prompt_ids: list[list[int]], weight: float, max_new_tokens: int,
                     stop: tuple[str, ...] = ()) -> list[Generation]:
        """Greedy MOD continuations of every prompt at one weight `weight` (it multiplies A)."""
        if self.model_b is None:
            raise RuntimeError("generate_mod before load_policy_b: this engine holds no policy B")
        out: list[Generation] = []
        for start in range(0, len(prompt_ids), self.max_batch_size):
            out += self._mod_batch(prompt_ids[start:start + self.max_batch_size], weight, max_new_tokens, stop)
        return out

    def _mod_batch(self, prompts, weight, max_new_tokens, stop) -> list[Generation]:
        longest = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompts):
            input_ids[row, longest - len(ids):] = torch.tensor(ids)
            attention[row, longest - len(ids):] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        fused = FusedPolicy(self.model_b, weight, attention.clone())
        max_new = min(max_new_tokens, max(self.max_len - longest, 1))
        seq = self.model.generate(input_ids=input_ids, attention_mask=attention, do_sample=False,
                                  temperature=None, top_p=None, top_k=None, max_new_tokens=max_new,
                                  eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                                  logits_processor=LogitsProcessorList([fused]))
        return [self._finish(p, t, stop) for p, t in zip(prompts, seq[:, longest:].tolist())]

"""ReferenceModel: the frozen start model, scoring responses under every context the loss reads."""

from __future__ import annotations

import torch

from selfsteer.algorithms.logprobs import packing_supported, score_sequences, token_logprobs
from selfsteer.runtime import limit_threads, resolve_device, resolve_dtype


class ReferenceModel:
    def __init__(self, model_path: str, ref_cfg, model_cfg, *, torch_threads: int = 1):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        limit_threads(torch_threads)
        self.device = resolve_device(ref_cfg.device)
        self.micro_batch_size = ref_cfg.micro_batch_size
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=model_cfg.trust_remote_code)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=resolve_dtype(model_cfg.dtype), trust_remote_code=model_cfg.trust_remote_code
        ).to(self.device).eval()
        self.model.requires_grad_(False)
        self.packed = ref_cfg.packing and packing_supported(self.model, pad_id=self.pad_id, device=self.device,
                                                            vocab_size=self.model.config.vocab_size,
                                                            mask_dtype=self.model.dtype)

    def ready(self) -> str:
        return self.device

    @torch.no_grad()
    def score(self, contexts: list[list[int]], responses: list[list[int]]) -> tuple[list[float], list[float]]:
        """Summed response log-probs and scored token counts, one per (context, response) row."""
        sums, counts = score_sequences(self.model, contexts, responses, pad_id=self.pad_id,
                                       device=self.device, micro_batch_size=self.micro_batch_size, packed=self.packed,
                                       mask_dtype=self.model.dtype)
        return sums.tolist(), counts.tolist()

    @torch.no_grad()
    def token_scores(self, contexts: list[list[int]], responses: list[list[int]]) -> list[list[float]]:
        """Per-token response log-probs, one list per row (SePO's token rewards read these)."""
        return token_logprobs(self.model, contexts, responses, pad_id=self.pad_id, device=self.device,
                              micro_batch_size=self.micro_batch_size)

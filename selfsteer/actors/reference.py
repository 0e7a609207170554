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

    def load_buckets(self, buckets: list, flats: list, verify: bool) -> list[str]:
        """Take the policy's weights (reference.refresh_every): the trainer's object-store buckets."""
        from selfsteer.actors import weight_sync as ws

        return ws.load_object_buckets(buckets, flats, lambda named: ws.copy_named(self.model, named, "reference model"),
                                      verify)

    def weights_fingerprint(self, buckets: list) -> list[str]:
        from selfsteer.actors import weight_sync as ws

        params = {n: p.detach() for n, p in self.model.named_parameters()}
        return [ws.fingerprint(ws.pack_bucket(b, params, "cpu")) for b in buckets]

    @torch.no_grad()
    def score(self, contexts: list[list[int]], responses: list[list[int]]) -> tuple[list[float], list[float]]:
        """Summed response log-probs and scored token counts, one per (context, response) row."""
        from selfsteer.progress import ProgressLine

        bar = ProgressLine("reference scoring", len(contexts), "rows")
        sums, counts = score_sequences(self.model, contexts, responses, pad_id=self.pad_id,
                                       device=self.device, micro_batch_size=self.micro_batch_size, packed=self.packed,
                                       mask_dtype=self.model.dtype, progress=bar.update)
        bar.close()
        return sums.tolist(), counts.tolist()

    @torch.no_grad()
    def token_scores(self, contexts: list[list[int]], responses: list[list[int]]) -> list[list[float]]:
        """Per-token response log-probs, one list per row (SePO's token rewards read these)."""
        return token_logprobs(self.model, contexts, responses, pad_id=self.pad_id, device=self.device,
                              micro_batch_size=self.micro_batch_size)

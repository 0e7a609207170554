"""A frozen causal LM ready to score responses: the one loader the reference and SIPO's scorers share.

Loading a model for scoring means more than `from_pretrained`: the device (bound to Ray's GPU under
NOSET), the pad id, the attention kernel and with it the packed-row layout, and two start-up probes
(does packing score as padding does; does decoder-then-lm_head score as the full forward) whose
answers decide the scoring path. Getting any of them differently in two actors gives two
actors that score the same row differently, so they live here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from selfsteer.algorithms.logprobs import packing_supported, score_sequences, split_head_supported, token_logprobs
from selfsteer.run.startup_checks import fallback
from selfsteer.utils.runtime import attention_choice, bind_ray_gpu, resolve_device, resolve_dtype


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (most chat models ship without a pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def probe_kernels(model, *, pad_id: int, device, vocab_size: int, role: str, mask_dtype: torch.dtype,
                  varlen: bool = False, packing: bool = True, split_head: bool = True, packing_forward=None,
                  attention_why: Optional[str] = None, on_padded: str = "using padded rows") -> tuple[bool, bool, dict]:
    """The start-up probes of a loaded model, shared by the scorers and the trainer ranks: (packed, split_head,
    fallbacks). `packing`/`split_head`: whether the feature is wanted (and applies); each wanted one is probed and,
    failing, warned naming `role` and recorded in `fallbacks`, as is `attention_why` (flash-attention not used).
    `packing_forward`: what the packing probe calls, when not `model` itself (a trainer's backend forward);
    `on_padded`: what packing off means for `role`, closing its warning. The caller sets train/eval mode."""
    fallbacks = fallback("flash_attention", role, attention_why) if attention_why else {}
    packed = packing and packing_supported(model if packing_forward is None else packing_forward, pad_id=pad_id,
                                           device=device, vocab_size=vocab_size, mask_dtype=mask_dtype, varlen=varlen)
    split = split_head and split_head_supported(model, pad_id=pad_id, device=device, vocab_size=vocab_size)
    if packing and not packed:
        fallbacks.update(fallback("packing", role, "packed rows score differently from padded ones (the model or "
                                  f"kernel ignores the packed mask); {on_padded}"))
    if split_head and not split:
        fallbacks.update(fallback("split_head", role, "decoder-then-lm_head scores differ from the full forward (or "
                                  "the model has no separable head); full logits, chunked"))
    return packed, split, fallbacks


@dataclass
class ScoringModel:
    model: Any
    pad_id: int
    device: str
    micro_batch_size: int
    packed: bool = False  # rows packed under a 4D mask (or position ids with flash-attention)
    split_head: bool = False  # lm_head applied per chunk of scored tokens
    varlen: bool = False  # flash-attention: packed rows as position ids
    fallbacks: dict = field(default_factory=dict)  # probes that turned a feature off: startup/fallback/<feature>

    @classmethod
    def load(cls, path: str, model_cfg, *, device: str, micro_batch_size: int, packing: bool = True,
             split_head: bool = True, tokenizer_path: Optional[str] = None, pad_id: Optional[int] = None,
             role: str = "scorer") -> "ScoringModel":
        """Load `path` frozen in `model_cfg.dtype`; `packing`/`split_head` are used where the probes pass (a
        probe that fails is warned, naming `role`, and recorded in `fallbacks`). `pad_id`: known already
        (several models sharing one tokenizer), so the tokenizer is not read again."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = resolve_device(device)
        if device == "cuda":
            bind_ray_gpu()  # under RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES "cuda" alone would mean GPU 0
        if pad_id is None:
            pad_id = pad_token_id(AutoTokenizer.from_pretrained(tokenizer_path or path,
                                                                trust_remote_code=model_cfg.trust_remote_code))
        dtype = resolve_dtype(model_cfg.dtype)
        attn, why = attention_choice(device, dtype)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code,
            **({"attn_implementation": attn} if attn else {})
        ).to(device).eval()
        model.requires_grad_(False)
        scorer = cls(model, pad_id, device, micro_batch_size, varlen=attn == "flash_attention_2")
        scorer.packed, scorer.split_head, scorer.fallbacks = probe_kernels(
            model, pad_id=pad_id, device=device, vocab_size=model.config.vocab_size, role=role,
            mask_dtype=model.dtype, varlen=scorer.varlen, packing=packing, split_head=split_head, attention_why=why)
        return scorer

    @torch.no_grad()
    def score(self, contexts: list[list[int]], responses: list[list[int]], progress=None) -> tuple[list[float], list[float]]:
        """Summed response log-probs and scored token counts, one per (context, response) row."""
        sums, counts = score_sequences(self.model, contexts, responses, pad_id=self.pad_id, device=self.device,
                                       micro_batch_size=self.micro_batch_size, packed=self.packed,
                                       mask_dtype=self.model.dtype, split_head=self.split_head, varlen=self.varlen,
                                       progress=progress)
        return sums.tolist(), counts.tolist()

    @torch.no_grad()
    def token_scores(self, contexts: list[list[int]], responses: list[list[int]]) -> list[list[float]]:
        """Per-token response log-probs, one list per row (SePO's token rewards read these)."""
        return token_logprobs(self.model, contexts, responses, pad_id=self.pad_id, device=self.device,
                              micro_batch_size=self.micro_batch_size, split_head=self.split_head)

"""Hugging Face `generate` backend: the portable fallback where vLLM is not installed."""

from __future__ import annotations

from itertools import groupby
from typing import Iterable, Optional

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from selfsteer.engines.base import Generation, Sampling


class _StopOnText(StoppingCriteria):
    """Stop a row once its decoded continuation contains a stop string.

    HF's own `stop_strings` needs a BPE-style vocabulary; decoding the tail works for any tokenizer.
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_len: int, window: int = 16):
        self.tokenizer, self.stops, self.prompt_len, self.window = tokenizer, stops, prompt_len, window

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tails = self.tokenizer.batch_decode(input_ids[:, max(self.prompt_len, input_ids.shape[1] - self.window):])
        return torch.tensor([any(s in t for s in self.stops) for t in tails], device=input_ids.device)


class HFBackend:
    """Batched HF generation on one device; weights updated in place, never reloaded."""

    def __init__(self, model_path: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 trust_remote_code: bool = False, max_batch_size: int = 64, lora=None, **_unused):
        """`model_path`: an HF model directory, or an adapter checkpoint (merged into its base on load).
        `lora` (a `model.lora` section): the engine holds the base as a peft model with that adapter, so a
        sync sends only the adapter tensors and they are copied in by name."""
        from transformers import AutoTokenizer

        from selfsteer.training.lora import load_causal_lm

        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        model = load_causal_lm(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
        if lora is not None:
            # The adapter stays unmerged: merging each round would need a kept copy of the base (twice the
            # memory) or an unmerge that drifts in floating point; rank-r matmuls cost little beside the base's.
            from selfsteer.training.lora import wrap_policy

            model = wrap_policy(model, lora)
        self.model = model.to(self.device).eval()
        self.max_batch_size = max_batch_size
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.max_len = getattr(self.model.config, "max_position_embeddings", 1 << 30)
        self._flats: tuple = ((), [])  # (bucket plan, its flat tensors) once parameters live in them

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: list[Sampling]) -> list[Generation]:
        """Generate for each prompt; requests sharing sampling settings are batched together."""
        results: list[Generation | None] = [None] * len(prompt_ids)
        order = sorted(range(len(prompt_ids)), key=lambda i: repr(sampling[i]))
        for _, group in groupby(order, key=lambda i: repr(sampling[i])):
            idx = list(group)
            for start in range(0, len(idx), self.max_batch_size):
                chunk = idx[start:start + self.max_batch_size]
                outs = self._generate_batch([prompt_ids[i] for i in chunk], sampling[chunk[0]])
                for i, out in zip(chunk, outs):
                    results[i] = out
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[list[int]], sampling: Sampling) -> list[Generation]:
        longest = max(len(p) for p in prompts)
        max_new = min(sampling.max_new_tokens, max(self.max_len - longest, 1))
        # Left padding keeps every prompt's last token adjacent to its first generated token.
        input_ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompts):
            input_ids[row, longest - len(ids):] = torch.tensor(ids)
            attention[row, longest - len(ids):] = 1
        greedy = sampling.temperature == 0
        kwargs = dict(do_sample=not greedy, max_new_tokens=max_new, eos_token_id=self.eos_ids,
                      pad_token_id=self.pad_id)
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stopping_criteria=StoppingCriteriaList([_StopOnText(self.tokenizer, sampling.stop, longest)]))
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                  **kwargs)
        new_tokens = out[:, longest:].tolist()
        return [self._finish(prompt, tokens, sampling.stop) for prompt, tokens in zip(prompts, new_tokens)]

    def _finish(self, prompt: list[int], tokens: list[int], stop: tuple[str, ...]) -> Generation:
        finish = "length"
        for pos, tok in enumerate(tokens):
            if tok in self.eos_ids:
                tokens, finish = tokens[:pos + 1], "stop"
                break
        text_ids = [t for t in tokens if t not in self.eos_ids]
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        hits = [s for s in stop if s and s in text]
        if hits:
            # Keep the tokens up to the one that completed the stop string (HF pads the rest).
            for k in range(1, len(text_ids) + 1):
                if any(s in self.tokenizer.decode(text_ids[:k], skip_special_tokens=True) for s in hits):
                    tokens = text_ids[:k]
                    break
            text, finish = text[:min(text.index(s) for s in hits)], "stop"
        return Generation(text=text, token_ids=tokens, finish_reason=finish, prompt_ids=list(prompt))

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        from selfsteer.sync.buckets import copy_named

        copy_named(self.model, named_tensors, "engine model")

    def named_parameters(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.model.named_parameters()

    # --- colocated layout: sleep while the trainer trains -------------------------------------
    def sleep(self) -> None:
        """Drop every parameter's storage (and the flat buckets they live in); keep the structure.

        Nothing is kept to wake from: the trainer's next sync reloads the weights.
        """
        self._asleep = {n: (tuple(p.shape), p.dtype) for n, p in self.model.named_parameters()}
        self._slept_plan = self._flats[0]
        for p in self.model.parameters():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        self._flats = ((), [])

    @torch.no_grad()
    def wake_up(self, tags: list[str] | None = None) -> None:
        """Give the parameters storage again (uninitialised: a sync fills it before any sampling).
        `tags` as vLLM's; this backend keeps no KV cache between calls, so "kv_cache" alone is a no-op."""
        if tags is not None and "weights" not in tags:
            return
        if not getattr(self, "_asleep", None):
            return
        params = dict(self.model.named_parameters())
        plan = getattr(self, "_slept_plan", ())
        if plan:  # back into flat buckets at once, so the sync after wake-up receives in place
            flats = []
            for bucket in plan:
                flat = torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=self.device)
                for slot in bucket.slots:
                    params[slot.name].data = flat[slot.offset:slot.offset + slot.numel].view(slot.shape)
                flats.append(flat)
            self._flats = (plan, flats)
        else:
            for name, (shape, dtype) in self._asleep.items():
                params[name].data = torch.empty(shape, dtype=dtype, device=self.device)
        self._asleep = {}

    @torch.no_grad()
    def bucket_flats(self, buckets: list) -> Optional[list[torch.Tensor]]:
        """Flat tensors the parameters live in, one per sync bucket, so a sync receives in place.

        On first use for a bucket plan every parameter moves into its slot of its bucket's flat
        tensor (`param.data` becomes a view; tied weights are one parameter, so they stay tied).
        None where the plan does not match the model (names, shapes or dtypes): then load by copy.
        """
        plan = tuple(buckets)
        if self._flats[0] == plan:
            return self._flats[1]
        params = dict(self.model.named_parameters())
        if sorted(s.name for b in plan for s in b.slots) != sorted(params):
            return None
        for bucket in plan:
            for slot in bucket.slots:
                p = params[slot.name]
                if p.dtype != bucket.torch_dtype or tuple(p.shape) != slot.shape:
                    return None
        flats = []
        for bucket in plan:
            flat = torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=self.device)
            for slot in bucket.slots:
                view = flat[slot.offset:slot.offset + slot.numel].view(slot.shape)
                view.copy_(params[slot.name].data)
                params[slot.name].data = view
            flats.append(flat)
        self._flats = (plan, flats)
        return flats


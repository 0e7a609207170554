"""Helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from selfsteer.algorithms.sipo import fuse_logits

#: Chat prompts of different lengths (a batch of them is left-padded), some with a system principle.
PROMPTS = [("what is 3 plus 4 ?", None),
           ("tell a short story about a cat and a dog in the morning .", "be helpful and polite ."),
           ("hi", None),
           ("write a short list of fruit and tea .", "be rude and vague .")]


def redraw(model, seed: int, head_scale: float = 0.5) -> None:
    """Weights at a larger scale than the toy model's 0.02 init, so greedy text depends on the whole
    context (at 0.02 the toy model nearly repeats the last token, and padding bugs would go unseen)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                param.normal_(0, head_scale if ("embed" in name or "lm_head" in name) else 0.25, generator=gen)


def stop_word(text: str) -> tuple[str, int]:
    """A word from the middle of `text` whose first occurrence (as a substring) is that word."""
    words = text.split()
    for k in range(2, len(words)):
        word = words[k]
        start = len(" ".join(words[:k])) + 1
        if len(word) >= 3 and text.find(word) == start:
            return word, start
    raise AssertionError(f"no usable stop word in {text!r}")


def checkpoint_tensors(path) -> dict[str, torch.Tensor]:
    """A toy checkpoint's tensors under an engine's parameter names (a tied model has no separate head)."""
    from safetensors.torch import load_file

    return {n: t for n, t in load_file(path / "model.safetensors").items() if n != "lm_head.weight"}


def mod_greedy_reference(model_a, model_b, prompt: list[int], weight: float, max_new_tokens: int,
                         eos_ids=None) -> list[int]:
    """One prompt, no cache, no padding: the definition MOD decoding must match."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            x = torch.tensor([ids])
            z = fuse_logits(model_a(input_ids=x).logits[0, -1], model_b(input_ids=x).logits[0, -1], weight)
            ids.append(int(z.argmax()))
            if eos_ids and ids[-1] in eos_ids:
                break
    return ids[len(prompt):]


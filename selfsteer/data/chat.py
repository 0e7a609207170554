"""Chat formatting shared by sampling and scoring, so the scored context is the sampled one."""

from __future__ import annotations

from typing import Optional


def chat_messages(prompt: str, system: Optional[str]) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]


PLACEMENTS = ("system", "user", "user_before")


def place_principle(prompt: str, principle: str, placement: str) -> tuple[str, Optional[str]]:
    """(user message, system prompt) of a principled request: the principle as the system prompt
    (the spec), after the user's question ("user"), or before it ("user_before": a small model tends
    to answer the last thing it read, so the question goes last)."""
    if placement == "system":
        return prompt, principle
    if placement == "user":
        return f"{prompt}\n\n{principle}", None
    if placement == "user_before":
        return f"{principle}\n\n{prompt}", None
    raise ValueError(f"principles.placement={placement!r}; expected one of {PLACEMENTS}")


def encode_chat(tokenizer, prompt: str, system: Optional[str] = None) -> list[int]:
    """Token ids of the chat-templated context, ending with the assistant generation prompt."""
    text = tokenizer.apply_chat_template(chat_messages(prompt, system), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]

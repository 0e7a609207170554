"""Chat formatting shared by sampling and scoring, so the scored context is the sampled one."""

from __future__ import annotations

from typing import Optional


def chat_messages(prompt: str, system: Optional[str]) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]


def encode_chat(tokenizer, prompt: str, system: Optional[str] = None) -> list[int]:
    """Token ids of the chat-templated context, ending with the assistant generation prompt."""
    text = tokenizer.apply_chat_template(chat_messages(prompt, system), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]

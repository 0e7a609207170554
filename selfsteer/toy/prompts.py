"""Deterministic toy prompts in the toy tokenizer's vocabulary (the embedded default's data)."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

_TEMPLATES = [
    "write a short list of {a} and {b} .",
    "explain why {a} is important for {b} .",
    "give three tips to improve a daily {a} habit .",
    "what is {n} plus {m} ?",
    "rewrite this sentence in a polite tone : {a} is {adj} .",
    "tell a short story about a {a} and a {b} .",
    "describe the {a} in the morning .",
    "how can i learn {a} fast ?",
]
_NOUNS = ["fruit", "music", "drawing", "cat", "dog", "river", "city", "book", "tea", "coffee", "school",
          "friend", "teacher", "song", "travel", "sport", "flower", "tree", "food", "water"]
_ADJS = ["good", "bad", "slow", "fast", "useful", "boring", "calm", "warm", "cold"]


def toy_prompts(n: int, seed: int = 0, with_targets: bool = False) -> list[dict]:
    """`n` prompts; `with_targets` adds a "response" (an SFT answer y* in the toy vocabulary)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        template = _TEMPLATES[i % len(_TEMPLATES)]
        a, b = rng.sample(_NOUNS, 2)
        text = template.format(a=a, b=b, adj=rng.choice(_ADJS), n=rng.randint(0, 50), m=rng.randint(0, 50))
        out.append({"prompt": text, "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4))})
        if with_targets:
            out[-1]["response"] = f"sure . here is a short and helpful answer about {a} and {b} ."
    return out


def write_toy_prompts(path: str | Path, n: int = 256, seed: int = 0, with_targets: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for rec in toy_prompts(n, seed, with_targets):
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path

"""The alignment benchmark's start model: the toy Llama, SFT'd to be steerable but not aligned.

Its SFT conversations follow the principles in the system prompt (a good principle makes the
response satisfy its dimension, a bad one break it) while every dimension no principle mentions,
and every dimension of a bare prompt, is satisfied only with probability `unprompted_rate`. So
the model can be steered, but left alone it is mediocre: exactly what SSO needs to improve.
`steerability` < 1 makes the principles obeyed only that often (the weakly steerable variant).

Built once per settings into a cache directory (like `build_toy_model`), deterministic for a seed
on a given machine and thread count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from selfsteer.toy import task as T
from selfsteer.principles.library import compose_v1_system

logger = logging.getLogger(__name__)
BUILDER_VERSION = 1


@dataclass(frozen=True)
class StartModelSettings:
    seed: int = 0
    examples: int = 24000  # SFT conversations (one epoch)
    batch_size: int = 64
    lr: float = 3e-3
    unprompted_rate: float = 0.5  # P(a dimension is satisfied) where no principle speaks about it
    steerability: float = 1.0  # P(the response obeys a principle the system prompt names)
    no_system_rate: float = 0.34  # share of conversations with no system prompt
    # architecture (head size 32 so vLLM's CPU kernels take it too)
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256


def sft_conversations(settings: StartModelSettings, prompts: list[T.TaskPrompt]) -> list[tuple[str, Optional[str], str]]:
    """(prompt, system or None, response) triples; the system prompts are the online run's (v1 library)."""
    rng = random.Random(f"sft:{settings.seed}")
    by_kind = [[p for p in prompts if p.kind == kind] for kind in T.KINDS]
    out = []
    for i in range(settings.examples):
        pool = by_kind[i % len(by_kind)]  # kinds in equal shares (arithmetic has the most prompts)
        prompt = pool[rng.randrange(len(pool))]
        follow = {d: rng.random() < settings.unprompted_rate for d in T.DIMENSIONS}
        system = None
        if rng.random() >= settings.no_system_rate:
            good = rng.random() < 0.5
            dims = rng.sample(T.LIBRARY, rng.choice((1, 2, 2, 2, 3)))
            system = compose_v1_system(dims, good=good)
            for d in dims:
                if rng.random() < settings.steerability:
                    follow[d.name] = good
        out.append((prompt.text, system, T.synth_response(prompt, follow, rng)))
    return out


def _encode(tokenizer, conversations):
    from selfsteer.data.chat import encode_chat

    rows = []
    for prompt, system, response in conversations:
        context = encode_chat(tokenizer, prompt, system)
        answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((context, answer))
    return rows


def _train(model, rows, settings: StartModelSettings, pad_id: int) -> list[float]:
    import torch

    order = list(range(len(rows)))
    random.Random(f"order:{settings.seed}").shuffle(order)
    steps = math.ceil(len(rows) / settings.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    losses = []
    from tqdm.auto import tqdm

    for step in tqdm(range(steps), desc="start-model SFT", unit="step", mininterval=5):
        batch = [rows[j] for j in order[step * settings.batch_size:(step + 1) * settings.batch_size]]
        width = max(len(c) + len(a) for c, a in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (c, a) in enumerate(batch):
            seq = c + a
            ids[i, :len(seq)] = torch.tensor(seq)
            labels[i, len(c):len(seq)] = torch.tensor(a)
            mask[i, :len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def build_start_model(cache_dir: Optional[str | Path] = None, settings: StartModelSettings = StartModelSettings(),
                      split_seed: int = 0) -> Path:
    """Build (or reuse) the start model; returns its HF directory. SFT uses training prompts only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfsteer.toy.model import build_toy_model, default_cache_dir

    key = json.dumps({"v": BUILDER_VERSION, "split_seed": split_seed, **asdict(settings)}, sort_keys=True)
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "toy"
    target = root / f"task-start-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (target / "model.safetensors").is_file():
        return target
    base = build_toy_model(root, hidden_size=settings.hidden_size, num_layers=settings.num_layers,
                           num_heads=settings.num_heads, num_kv_heads=settings.num_kv_heads,
                           intermediate_size=settings.intermediate_size, max_position_embeddings=256,
                           seed=settings.seed, extra_words=T.task_words())
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    train, _ = T.split_prompts(split_seed)
    started = time.time()
    rows = _encode(tokenizer, sft_conversations(settings, train))
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(settings.seed)
    try:
        losses = _train(model, rows, settings, tokenizer.pad_token_id)
    finally:
        torch.random.set_rng_state(rng_state)
    model.eval()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "selfsteer_task.json").write_text(json.dumps(
            {"settings": asdict(settings), "split_seed": split_seed, "sft_seconds": round(time.time() - started, 1),
             "sft_loss_first": losses[0], "sft_loss_last": sum(losses[-20:]) / len(losses[-20:])}, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:  # a concurrent builder won; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("start model built in %.0f s -> %s", time.time() - started, target)
    return target

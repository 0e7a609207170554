"""Round pieces every online method shares: persisting records, sync + checkpoint, metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

from selfsteer.run import checkpoint
from selfsteer.data.chat import chat_messages, encode_chat
from selfsteer.engines.base import Sampling
from selfsteer.run.metrics import weighted_mean


def sampling(cfg, r: int) -> Sampling:
    """The run's sampling settings with a per-round seed (a resumed round samples the same)."""
    s = cfg.rollout.sampling
    return Sampling(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, seed=cfg.seed * 100003 + r)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Atomically, so a killed run never leaves a half-written record file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def new_round_dir(run_dir: Path, r: int) -> Path:
    path = run_dir / "rounds" / f"round_{r:04d}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def next_prompts(cfg, inputs) -> tuple[list, int]:
    """The round's prompts from the cursor, those too long skipped (and counted)."""
    return short_prompts(inputs, inputs.cursor.next_batch(cfg.data.prompts_per_round))


def short_prompts(inputs, prompts) -> tuple[list, int]:
    """Prompts whose chat context fits `data.max_prompt_tokens`, and how many were skipped."""
    kept = [p for p in prompts if len(encode_chat(inputs.tokenizer, p.prompt)) <= inputs.max_prompt_tokens]
    return kept, len(prompts) - len(kept)


def answer_ids(tokenizer, prompt: str, answer: str, context: list[int]) -> list[int]:
    """Token ids of a given answer as the chat template writes it after `context`, up to its end-of-turn.

    Scored like a sampled response (which stops at end-of-turn), so y* and the samples compare fairly.
    """
    text = tokenizer.apply_chat_template(chat_messages(prompt, None) + [{"role": "assistant", "content": answer}],
                                         tokenize=False)
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    if full[:len(context)] != context:
        raise ValueError(f"the chat template tokenizes the answer to {prompt[:60]!r} across the prompt boundary; "
                         "cannot score the target as a response")
    ids = full[len(context):]
    eos = tokenizer.eos_token_id
    return ids[:ids.index(eos) + 1] if eos in ids else ids


def train_sync_save(cfg, roles, inputs, r: int, run_dir: Path, timer, items: list[dict], keys: list[str],
                    loss_kwargs: dict) -> dict[str, float]:
    """Train on `items` (equal shards), sync the engines, checkpoint; the round's shared metrics."""
    usable = len(items) - len(items) % len(roles.trainer.ranks)  # equal shards: ranks step together
    with timer("train"):
        results = roles.trainer.train(items[:usable], keys, loss_kwargs) if usable else []
    with timer("sync"):
        sync_stats = roles.syncer.sync(roles.pool.engines) if cfg.rollout.update_weights else {}
    with timer("checkpoint"):
        if r % cfg.save_every == 0 or r == cfg.rounds:
            roles.trainer.save_hf(str(run_dir / "checkpoints" / f"round_{r:04d}"))
        checkpoint.save_round(run_dir, r, roles.trainer, inputs.cursor.state_dict(), cfg)
    trained = weighted_mean(results) if results else {}
    metrics = {f"train/{k}": v for k, v in trained.items() if not k.startswith("avg_logp/")}
    metrics.update(sync_stats, **timer.seconds)
    metrics.update({"data/unused_for_shards": float(len(items) - usable), "rollout/engines": float(len(roles.pool.engines)),
                    "train/optimizer_steps": float(sum(x["optimizer_steps"] for x in results[:1])),
                    "faults/engine_restarts_total": float(roles.pool.stats.get("engine_restarts", 0))})
    metrics.update({f"faults/{k}_total": float(v) for k, v in roles.restarts.items()})
    return metrics

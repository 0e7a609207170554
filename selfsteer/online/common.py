"""Round pieces every online method shares: sampling settings, prompts, train -> sync -> save, metrics."""

from __future__ import annotations

from pathlib import Path

from selfsteer.data.chat import chat_messages
from selfsteer.engines.base import Sampling
from selfsteer.run import checkpoint
from selfsteer.run.metrics import weighted_mean
from selfsteer.training.steps import equal_shards, state_due
from selfsteer.utils.run_dir import RunDir


def sampling(cfg, r: int) -> Sampling:
    """The run's sampling settings with a per-round seed (a resumed round samples the same)."""
    s = cfg.rollout.sampling
    return Sampling(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, seed=cfg.seed * 100003 + r)


def next_prompts(cfg, inputs, r: int) -> tuple[list, int]:
    """The round's prompts from the cursor, those too long skipped (recorded in skipped.jsonl)."""
    prompts, _, skipped = inputs.drop_long(inputs.cursor.next_batch(cfg.data.prompts_per_round), None, r)
    return prompts, skipped


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


def save(cfg, roles, run_dir: Path, r: int, cursor_state: dict) -> None:
    """The round's HF checkpoint when `save_every` says so, and its resumable state."""
    if state_due(r, cfg.save_every, cfg.rounds):
        roles.trainer.save_hf(str(RunDir(run_dir).checkpoint(r)))
    checkpoint.save_round(run_dir, r, roles.trainer, cursor_state, cfg)


def train_sync_save(cfg, roles, r: int, run_dir: Path, timer, items: list[dict], keys: list[str], loss_kwargs: dict,
                    cursor_state: dict, *, sleep: bool = False, wait=None) -> tuple[dict[str, float], dict]:
    """Train on `items` (equal shards), sync the engines, refresh the reference when due, checkpoint.

    Hooks for SSO's round: `sleep` frees colocated engines before training (timed as time/sleep);
    `wait()` blocks until the round sampled ahead is done, before the sync (time/generation_wait).
    Returns the round's shared metrics (without the per-row `avg_logp/*`) and the trainer's means.
    """
    usable = equal_shards(len(items), len(roles.trainer.ranks))
    slept = {}
    if sleep:
        with timer("sleep"):
            slept = roles.sleep_engines() if usable else {}  # placement=colocated: free the shared devices
    with timer("train"):
        results = roles.trainer.train(items[:usable], keys, loss_kwargs) if usable else []
    if wait is not None:
        timer.seconds["time/generation_wait"] = wait()  # engines take new weights only when idle
    with timer("sync"):
        sync_stats = roles.syncer.sync(roles.pool.engines) if cfg.rollout.update_weights else {}
    if cfg.reference.refresh_every and r % cfg.reference.refresh_every == 0:
        with timer("reference_refresh"):  # async_rounds: round r+1 was scored already; it takes effect at r+2
            roles.refresh_reference()
    with timer("checkpoint"):
        save(cfg, roles, run_dir, r, cursor_state)
    trained = weighted_mean(results) if results else {}
    metrics = {f"train/{k}": v for k, v in trained.items() if not k.startswith("avg_logp/")}
    metrics.update(sync_stats, **slept, **timer.seconds)
    metrics.update({"data/unused_for_shards": float(len(items) - usable),
                    "rollout/engines": float(len(roles.pool.engines)),
                    "train/optimizer_steps": float(sum(x["optimizer_steps"] for x in results[:1])),
                    "faults/engine_restarts_total": float(roles.pool.stats.get("engine_restarts", 0))})
    metrics.update({f"faults/{k}_total": float(v) for k, v in roles.restarts.items()})
    return metrics, trained

"""Self-Contrast online round (docs/concepts/self-contrast.md §1): engines sample n answers per
prompt, the embedding actor embeds y* and the samples, `select_negatives` keeps k unlike y*, the
reference scores y* and the negatives, and the trainer steps on the multi-negative DPO loss.

Deviation (docs/concepts/self-contrast.md §6 item 8): the official method is one offline round; here every round
re-samples from
the current policy, with π_ref fixed at the start model. The negative draw is seeded per round
(`seed`, round) rather than once per run, so a resumed round draws the same negatives.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import ray
import torch

from selfsteer.algorithms.self_contrast import multi_negative_dpo_loss, select_negatives
from selfsteer.engines.base import ChatRequest
from selfsteer.run.metrics import PhaseTimer
from selfsteer.online.common import answer_ids, new_round_dir, next_prompts, sampling, train_sync_save, write_jsonl


def start(cfg, roles, inputs) -> None:
    """Start the embedding actor beside the run's other roles (killed with them)."""
    from selfsteer.actors.embedding import Embedder
    from selfsteer.utils.runtime import actor_env

    sc = cfg.self_contrast
    roles.embedder = ray.remote(Embedder).options(
        num_cpus=sc.num_cpus, runtime_env={"env_vars": actor_env(cfg.ray.torch_threads, {"HF_HUB_OFFLINE": "1"})},
        max_restarts=cfg.ray.max_restarts, max_task_retries=0,
    ).remote(sc.encoder_path, device="cpu", batch_size=sc.embed_batch_size, torch_threads=cfg.ray.torch_threads)
    roles.extra_actors.append(roles.embedder)
    ray.get(roles.embedder.ready.remote(), timeout=cfg.ray.startup_timeout_s)


def keys(k: int) -> list[str]:
    """The trainer's per-example rows: the target, then the negatives in index order."""
    return ["chosen"] + [f"neg_{j}" for j in range(k)]


def run_round(cfg, roles, inputs, r: int, run_dir: Path) -> dict[str, float]:
    sc, timer = cfg.self_contrast, PhaseTimer()
    round_dir = new_round_dir(run_dir, r)
    with timer("generation"):
        prompts, skipped_long = next_prompts(cfg, inputs)
        requests = [ChatRequest(p.prompt) for p in prompts for _ in range(sc.n_samples)]
        generations = roles.generate(requests, sampling(cfg, r))
        samples = [generations[i * sc.n_samples:(i + 1) * sc.n_samples] for i in range(len(prompts))]
    with timer("embedding"):
        texts = [g.text.lstrip(" ") for g in generations]  # docs/concepts/self-contrast.md §1: strip leading spaces
        emb = roles._call("embedder", roles.embedder, lambda: roles.embedder.embed.remote(
            [p.target for p in prompts] + texts)) if prompts else torch.zeros(0, 1)
        targets, cands = emb[:len(prompts)], emb[len(prompts):].view(len(prompts), sc.n_samples, -1)
    rng = random.Random(cfg.seed * 1000003 + r)
    records, chosen = [], []
    for i, p in enumerate(prompts):
        picked = select_negatives(targets[i], cands[i], drop_fraction=sc.drop_fraction, k=sc.k, rng=rng,
                                  texts=texts[i * sc.n_samples:(i + 1) * sc.n_samples])
        records.append({"uuid": p.uid, "idx": p.index, "round": r, "instruction": p.prompt, "target": p.target,
                        "samples": [g.text for g in samples[i]], "negatives": picked})
        if picked:
            chosen.append((i, picked))
    with timer("persist"):
        write_jsonl(round_dir / "pairs.jsonl", records)
    with timer("reference"):
        rows = []  # per example: the (context, response) of y* then of each negative
        for i, picked in chosen:
            context = samples[i][0].prompt_ids
            target = answer_ids(inputs.tokenizer, prompts[i].prompt, prompts[i].target, context)
            rows.append([(context, target)] + [(context, samples[i][j].token_ids) for j in picked])
        flat = [row for ex in rows for row in ex]
        ref = roles.reference_scores([c for c, _ in flat], [t for _, t in flat])[0] if flat else []
        names, width = keys(sc.k), sc.k + 1
        items = [{name: {"context": c, "response": t, "ref_logp": ref[e * width + j]}
                  for j, (name, (c, t)) in enumerate(zip(names, ex))} for e, ex in enumerate(rows)]
    metrics = train_sync_save(cfg, roles, inputs, r, run_dir, timer, items, names, {"beta": sc.beta})
    n_gen = max(len(generations), 1)
    metrics.update({"data/prompts": float(len(prompts)), "data/prompts_with_pairs": float(len(chosen)),
                    "data/pairs": float(len(chosen) * sc.k), "data/skipped_long_prompts": float(skipped_long),
                    "rollout/sample_tokens": sum(len(g.token_ids) for g in generations) / n_gen,
                    "rollout/truncated": sum(g.finish_reason == "length" for g in generations) / n_gen,
                    "rollout/unique_samples": sum(len(set(texts[i * sc.n_samples:(i + 1) * sc.n_samples]))
                                                  for i in range(len(prompts))) / max(len(prompts), 1)})
    (round_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def loss(policy: dict, reference: dict, lengths: dict, *, beta: float):
    """Trainer loss (`LOSSES["self_contrast"]`): mean DPO loss over each example's k (y*, negative) pairs."""
    negs = sorted((k for k in policy if k.startswith("neg_")), key=lambda k: int(k[4:]))
    pi_r = torch.stack([policy[k] for k in negs], 1)
    ref_r = torch.stack([reference[k] for k in negs], 1)
    value = multi_negative_dpo_loss(policy["chosen"], pi_r, reference["chosen"], ref_r, beta=beta)
    with torch.no_grad():
        chosen_reward = beta * (policy["chosen"] - reference["chosen"])
        rejected_reward = beta * (pi_r - ref_r)
        margins = chosen_reward[:, None] - rejected_reward
    return value, {"loss": value.item(), "rewards/chosen": chosen_reward.mean().item(),
                   "rewards/rejected": rejected_reward.mean().item(), "rewards/margins": margins.mean().item(),
                   "rewards/accuracies": (margins > 0).float().mean().item()}

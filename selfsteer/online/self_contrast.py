"""Self-Contrast online round (docs/concepts/self-contrast.md §1): engines sample n answers per
prompt, the embedding actor embeds y* and the samples, `select_negatives` keeps k unlike y*, the
reference scores y* and the negatives, and the trainer steps on the multi-negative DPO loss.

Deviation (docs/concepts/self-contrast.md §6 item 8): the official method is one offline round; here
every round re-samples from the current policy, with π_ref fixed at the start model. The negative draw is seeded per round
(`seed`, round) rather than once per run, so a resumed round draws the same negatives.
"""

from __future__ import annotations

import random

import ray
import torch

from selfsteer.algorithms.registry import method
from selfsteer.algorithms.self_contrast import select_negatives
from selfsteer.engines.base import ChatRequest
from selfsteer.run.metrics import PhaseTimer
from selfsteer.online.common import answer_ids, next_prompts, sampling, train_sync_save
from selfsteer.utils.io import write_jsonl
from selfsteer.utils.run_dir import RunDir


class SelfContrastRound:
    """Self-Contrast's round; owns the embedding actor (killed with the run's roles)."""

    def __init__(self, cfg, roles, inputs):
        from selfsteer.actors.embedding import Embedder

        self.cfg, self.roles, self.inputs = cfg, roles, inputs
        spec, sc = method(cfg.algo), cfg.self_contrast
        self.keys, self.loss_kwargs = spec.keys(cfg), spec.loss_kwargs(cfg)
        self.embedder = roles.spawn(Embedder, sc.encoder_path, resources={"num_cpus": sc.num_cpus},
                                    env={"HF_HUB_OFFLINE": "1"}, device="cpu", batch_size=sc.embed_batch_size,
                                    torch_threads=cfg.ray.torch_threads)
        ray.get(self.embedder.ready.remote(), timeout=cfg.ray.startup_timeout_s)

    def close(self) -> None:
        pass

    def run(self, r: int) -> dict[str, float]:
        cfg, roles, inputs = self.cfg, self.roles, self.inputs
        sc, timer = cfg.self_contrast, PhaseTimer()
        round_dir = RunDir(inputs.run_dir).round(r, create=True)
        with timer("generation"):
            prompts, skipped_long = next_prompts(cfg, inputs, r)
            requests = [ChatRequest(p.prompt) for p in prompts for _ in range(sc.n_samples)]
            generations = roles.generate(requests, sampling(cfg, r))
            samples = [generations[i * sc.n_samples:(i + 1) * sc.n_samples] for i in range(len(prompts))]
        with timer("embedding"):
            texts = [g.text.lstrip(" ") for g in generations]  # docs/concepts/self-contrast.md §1: strip leading spaces
            emb = roles.call("embedder", self.embedder, lambda: self.embedder.embed.remote(
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
            names, width = self.keys, sc.k + 1
            items = [{name: {"context": c, "response": t, "ref_logp": ref[e * width + j]}
                      for j, (name, (c, t)) in enumerate(zip(names, ex))} for e, ex in enumerate(rows)]
        metrics, _ = train_sync_save(cfg, roles, r, inputs.run_dir, timer, items, names, self.loss_kwargs,
                                     inputs.cursor.state_dict())
        n_gen = max(len(generations), 1)
        metrics.update({"data/prompts": float(len(prompts)), "data/prompts_with_pairs": float(len(chosen)),
                        "data/pairs": float(len(chosen) * sc.k), "data/skipped_long_prompts": float(skipped_long),
                        "rollout/sample_tokens": sum(len(g.token_ids) for g in generations) / n_gen,
                        "rollout/truncated": sum(g.finish_reason == "length" for g in generations) / n_gen,
                        "rollout/unique_samples": sum(len(set(texts[i * sc.n_samples:(i + 1) * sc.n_samples]))
                                                      for i in range(len(prompts))) / max(len(prompts), 1)})
        return metrics

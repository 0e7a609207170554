"""SIPO's fixed models (docs/concepts/sipo.md §1-§2): stage 0 trains pi_A0 and pi_B0 by DPO from the start
model (once, cached by a hash of their inputs), and a scorer actor turns summed log-probs under
pi_sft, pi_A0, pi_B0 and the weight soups into implicit rewards.

Soups interpolate full weights, soup_w = w·theta_A0 + (1-w)·theta_B0 (no LoRA here, so the spec's
note on interpolating LoRA factors separately does not apply). The scorer holds 3 + |W| models:
fine for the toy task; a large model would want LoRA adapters over one base instead.
"""

from __future__ import annotations

import random
from typing import Optional

import torch

from selfsteer.online.sepo_oracle import cache_key, load_pairs, train_oracle


def conflict_pair(prompt, objective_a: str, objective_b: str, rng: random.Random) -> tuple[str, str]:
    """(y1, y2) on the alignment task: y1 meets rule A and breaks B, y2 the reverse; the other
    rules are drawn once and shared, so A and B are the only difference (a conflicting pair)."""
    from selfsteer.toy import task as T

    rest = {d: rng.random() < 0.5 for d in T.DIMENSIONS}
    y1 = T.synth_response(prompt, {**rest, objective_a: True, objective_b: False}, random.Random(rng.random()))
    y2 = T.synth_response(prompt, {**rest, objective_a: False, objective_b: True}, random.Random(rng.random()))
    return y1, y2


def task_originals(prompt_text: str, objective_a: str, objective_b: str) -> tuple[str, str]:
    """The round's original pair for a task prompt (the dataset's y1, y2 in the paper), fixed per prompt."""
    from selfsteer.toy import task as T

    prompt = T.prompts_by_text()[prompt_text]
    return conflict_pair(prompt, objective_a, objective_b, random.Random(f"sipo-originals:{prompt_text}"))


def task_stage0_pairs(n: int, seed: int, split_seed: int, objective_a: str, objective_b: str) -> tuple[list[dict], list[dict]]:
    """DPO pairs per objective from training prompts: A prefers y1, B prefers y2 (conflicting labels)."""
    from selfsteer.toy import task as T

    train, _ = T.split_prompts(split_seed)
    rng = random.Random(f"sipo-stage0:{seed}")
    pairs_a, pairs_b = [], []
    for p in T.balanced(train, n, seed):
        y1, y2 = conflict_pair(p, objective_a, objective_b, rng)
        pairs_a.append({"prompt": p.text, "chosen": y1, "rejected": y2})
        pairs_b.append({"prompt": p.text, "chosen": y2, "rejected": y1})
    return pairs_a, pairs_b


def stage0(cfg, sft_path: str) -> dict:
    """Paths of pi_A0 and pi_B0 (given, or DPO-trained from `sft_path` and cached), and their stats."""
    sp = cfg.sipo
    if sp.policy_a:  # checked by preflight.check_inputs, before Ray starts
        return {"policy_a": sp.policy_a, "policy_b": sp.policy_b, "stats": {}}
    if sp.pairs_a:
        pairs = {"a": load_pairs(sp.pairs_a), "b": load_pairs(sp.pairs_b)}
    else:
        a, b = task_stage0_pairs(sp.stage0_pairs, cfg.seed, cfg.task.split_seed, sp.objective_a, sp.objective_b)
        pairs = {"a": a, "b": b}
    settings = {"beta": sp.beta, "steps": sp.stage0_steps, "lr": sp.stage0_lr, "batch_size": sp.stage0_batch_size,
                "seed": cfg.seed}
    from selfsteer.utils.paths import cache_root

    root = cache_root(cfg.model.cache_dir)
    out = {"stats": {}}
    for x in ("a", "b"):
        path = root / f"sipo-policy-{x}-{cache_key(sft_path, pairs[x], settings)}"
        out["stats"][x] = train_oracle(sft_path, pairs[x], str(path), torch_threads=cfg.ray.torch_threads, **settings)
        out[f"policy_{x}"] = str(path)
    return out


def soup_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
    """w·A + (1-w)·B per tensor (floating tensors only; buffers such as int ids are A's)."""
    if a.keys() != b.keys():
        raise ValueError(f"policies differ in parameters: {sorted(a.keys() ^ b.keys())[:5]}")
    return {k: weight * a[k] + (1 - weight) * b[k] if a[k].is_floating_point() else a[k] for k in a}


class SipoScorer:
    """Summed response log-probs under pi_sft, pi_A0, pi_B0 and soup_w for w in W (frozen)."""

    def __init__(self, sft_path: str, a_path: str, b_path: str, weights: list[float], ref_cfg, model_cfg,
                 *, torch_threads: int = 1):
        from selfsteer.actors.scoring import ScoringModel
        from selfsteer.utils.runtime import limit_threads

        limit_threads(torch_threads)
        # Padded rows, full logits: the spec's reward values as first measured (the loader's probes off).
        # Every model reads the SFT tokenizer's pad id (read once, with the first model).
        sft = ScoringModel.load(sft_path, model_cfg, device=ref_cfg.device, micro_batch_size=ref_cfg.micro_batch_size,
                                packing=False, split_head=False)
        load = lambda p: ScoringModel.load(p, model_cfg, device=ref_cfg.device,  # noqa: E731
                                           micro_batch_size=ref_cfg.micro_batch_size, packing=False,
                                           split_head=False, pad_id=sft.pad_id)
        self.models = {"sft": sft, "A0": load(a_path), "B0": load(b_path)}
        state_a, state_b = self.models["A0"].model.state_dict(), self.models["B0"].model.state_dict()
        for w in weights:
            soup = load(a_path)
            soup.model.load_state_dict(soup_state(state_a, state_b, w))
            self.models[f"soup_{w:g}"] = soup

    def names(self) -> list[str]:
        """Reward models in order (spec: A0, B0, then the soups); "sft" is the implicit rewards' base."""
        return [n for n in self.models if n != "sft"]

    def score(self, contexts: list[list[int]], responses: list[list[int]]) -> dict[str, list[float]]:
        return {name: m.score(contexts, responses)[0] for name, m in self.models.items()}


def originals(cfg, prompt_text: str, file_pairs: Optional[dict]) -> Optional[tuple[str, str]]:
    """(y1, y2) for a round prompt: the task's conflicting pair, or pairs_a's (chosen, rejected)."""
    if file_pairs is not None:
        return file_pairs.get(prompt_text)
    return task_originals(prompt_text, cfg.sipo.objective_a, cfg.sipo.objective_b)

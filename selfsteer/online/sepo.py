"""SePO online round (docs/concepts/sepo.md §1): engines sample two answers per prompt, the frozen
oracle and reference score every token, the pair is labelled by the oracle's sequence reward
(the online `oracle` source, docs/concepts/sepo.md §6.9), the top / bottom `fraction` of tokens by reward are
selected, and the trainer steps on the reference-free loss over those tokens only.

Eligible tokens are every response token including EOS (the spec's default, not the released
code's skipped first token). The oracle is a ReferenceModel actor on the oracle weights.
"""

from __future__ import annotations

import ray
import torch

from selfsteer.algorithms.registry import method
from selfsteer.algorithms.sepo import select_tokens, sequence_reward, token_rewards
from selfsteer.engines.base import ChatRequest
from selfsteer.run.metrics import PhaseTimer
from selfsteer.online.common import next_prompts, sampling, train_sync_save
from selfsteer.utils.io import write_jsonl
from selfsteer.utils.run_dir import RunDir


def _padded(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    values, mask = torch.zeros(len(rows), width), torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        values[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
    return values, mask


class SepoRound:
    """SePO's round; owns the oracle (trained or loaded from the cache, hosted in its own scoring actor)."""

    def __init__(self, cfg, roles, inputs):
        from selfsteer.actors.reference import ReferenceModel
        from selfsteer.online.sepo_oracle import oracle_path

        self.cfg, self.roles, self.inputs = cfg, roles, inputs
        spec = method(cfg.algo)
        self.keys, self.loss_kwargs = spec.keys(cfg), spec.loss_kwargs(cfg)
        path, self.oracle_stats = oracle_path(cfg, inputs.reference_path, cfg.model.cache_dir)
        self.oracle = roles.spawn(ReferenceModel, path, cfg.reference, cfg.model, resources={"num_cpus": cfg.sepo.num_cpus},
                                  torch_threads=cfg.ray.torch_threads)
        ray.get(self.oracle.ready.remote(), timeout=cfg.ray.startup_timeout_s)

    def close(self) -> None:
        pass

    def run(self, r: int) -> dict[str, float]:
        cfg, roles, inputs = self.cfg, self.roles, self.inputs
        sp, timer = cfg.sepo, PhaseTimer()
        round_dir = RunDir(inputs.run_dir).round(r, create=True)
        with timer("generation"):
            prompts, skipped_long = next_prompts(cfg, inputs, r)
            gens = roles.generate([ChatRequest(p.prompt) for p in prompts for _ in range(2)], sampling(cfg, r))
        pairs, drops = [], {}
        for i, p in enumerate(prompts):
            a, b = gens[2 * i], gens[2 * i + 1]
            reason = "empty" if not (a.token_ids and b.token_ids) else "identical" if a.token_ids == b.token_ids else None
            if reason:
                drops[reason] = drops.get(reason, 0) + 1
            else:
                pairs.append((p, a, b))
        records, items, stats = [], [], {"reward_chosen": 0.0, "reward_rejected": 0.0, "selected": 0.0, "tokens": 0.0}
        if pairs:
            with timer("token_rewards"):
                ctxs = [g.prompt_ids for _, a, b in pairs for g in (a, b)]
                resps = [g.token_ids for _, a, b in pairs for g in (a, b)]
                oracle = roles.call("sepo oracle", self.oracle, lambda: self.oracle.token_scores.remote(ctxs, resps))
                ref = roles.reference_token_scores(ctxs, resps)
                o, mask = _padded(oracle)
                rewards = token_rewards(o, _padded(ref)[0], mask)
                seq = sequence_reward(rewards, mask)
                chosen = [2 * i if seq[2 * i] >= seq[2 * i + 1] else 2 * i + 1 for i in range(len(pairs))]
                rejected = [c + 1 if c % 2 == 0 else c - 1 for c in chosen]
                sel_c = select_tokens(rewards[chosen], mask[chosen], fraction=sp.fraction, largest=True)
                sel_r = select_tokens(rewards[rejected], mask[rejected], fraction=sp.fraction, largest=False)
            for i, (p, _, _) in enumerate(pairs):
                c, j = chosen[i], rejected[i]
                items.append({"chosen": {"context": ctxs[c], "response": resps[c], "ref_logp": 0.0,
                                         "mask": sel_c[i, :len(resps[c])].tolist()},
                              "rejected": {"context": ctxs[j], "response": resps[j], "ref_logp": 0.0,
                                           "mask": sel_r[i, :len(resps[j])].tolist()}})
                records.append({"uuid": p.uid, "idx": p.index, "round": r, "instruction": p.prompt,
                                "chosen": gens[c].text, "rejected": gens[j].text,
                                "oracle_reward": [float(seq[c]), float(seq[j])], "tokens": [len(resps[c]), len(resps[j])],
                                "selected_chosen": torch.nonzero(sel_c[i]).flatten().tolist(),
                                "selected_rejected": torch.nonzero(sel_r[i]).flatten().tolist()})
            stats = {"reward_chosen": float(seq[chosen].mean()), "reward_rejected": float(seq[rejected].mean()),
                     "selected": float(sel_c.sum() + sel_r.sum()), "tokens": float(mask.sum())}
        with timer("persist"):
            write_jsonl(round_dir / "pairs.jsonl", records)
        metrics, _ = train_sync_save(cfg, roles, r, inputs.run_dir, timer, items, self.keys, self.loss_kwargs,
                                     inputs.cursor.state_dict())
        metrics.update({"data/prompts": float(len(prompts)), "data/pairs": float(len(items)),
                        "data/skipped_long_prompts": float(skipped_long),
                        **{f"data/dropped_{k}": float(v) for k, v in drops.items()},
                        "oracle/seq_reward_chosen": stats["reward_chosen"], "oracle/seq_reward_rejected": stats["reward_rejected"],
                        "sepo/selected_token_share": stats["selected"] / max(stats["tokens"], 1.0),
                        **{f"oracle/train_{k}": float(v) for k, v in self.oracle_stats.items()
                           if isinstance(v, (int, float))}})
        return metrics

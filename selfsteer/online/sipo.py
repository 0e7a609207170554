"""SIPO online round (docs/concepts/sipo.md §1): MOD candidates from two policies, review/rewrite,
Pareto filtering on implicit rewards, re-alignment of both policies.

Roles: the run's trainer group and engines carry policy A (started from pi_A0 by stage 0, see
sipo_models); `SipoRound` adds a second trainer group for policy B, loads B into every engine
(rollout.backend=hf_mod holds it beside A) and starts the frozen scorer. Each round:
  1. engines decode one greedy MOD candidate per w in W (w multiplies A); with `sipo.rewrite`,
     A reviews each candidate and MOD (same w) rewrites it, kept if better on A0 or B0;
  2. the scorer gives R_j = beta (log pi_j - log pi_sft) for j in (A0, B0, soups) on candidates
     and both originals; a candidate must beat both originals on every R_j, best sum kept;
  3. pairs (c > y1), (c > y2) train A (reference pi_A0) and B (reference pi_B0) on sipo_loss;
     A syncs into the engines as usual, B through the object store into their B slot.
Two groups rather than one alternating: each keeps its own optimizer state, and they can sit on
different GPUs. Resume is not supported for SIPO (B's optimizer state is not checkpointed).
"""

from __future__ import annotations

import ray
import torch

from selfsteer.algorithms.registry import method
from selfsteer.algorithms.sipo import implicit_rewards, keep_rewrite, pareto_filter, select_pareto_best
from selfsteer.data.chat import encode_chat
from selfsteer.engines.base import ChatRequest, Sampling
from selfsteer.run.metrics import PhaseTimer, weighted_mean
from selfsteer.online.common import answer_ids, next_prompts, train_sync_save
from selfsteer.training.steps import equal_shards, state_due
from selfsteer.utils.io import write_jsonl
from selfsteer.utils.run_dir import RunDir
REVIEW = ("Question: {q}\nResponse: {y}\nGive three suggestions to make the response more {a} and more {b}.")
REWRITE = ("Question: {q}\nResponse: {y}\nReview: {r}\nRevise the response using the review, to be more {a} and "
           "more {b}. Write only the revised response.")


def _mod(cfg, roles, requests: list[ChatRequest], weights) -> list[list]:
    """result[i][j]: request j's greedy MOD continuation at weights[i], requests sharded over engines."""
    engines = roles.pool.engines
    shards = [list(range(k, len(requests), len(engines))) for k in range(len(engines))]
    calls = [(e, idx) for e, idx in zip(engines, shards) if idx]
    outs = ray.get([e.generate_mod.remote([requests[i] for i in idx], list(weights), cfg.sipo.max_new_tokens)
                    for e, idx in calls], timeout=cfg.ray.call_timeout_s)
    result = [[None] * len(requests) for _ in weights]
    for (_, idx), out in zip(calls, outs):
        for wi, per_w in enumerate(out):
            for i, g in zip(idx, per_w):
                result[wi][i] = g
    return result


def _rewrite(cfg, roles, prompts, candidates) -> tuple[list[list], list[list[str]]]:
    """Review (policy A, greedy) then rewrite (MOD, the candidate's own w) every candidate."""
    sp = cfg.sipo
    greedy = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=sp.max_new_tokens)
    flat = [(wi, j) for wi in range(len(sp.weights)) for j in range(len(prompts))]
    fill = {"a": sp.objective_a.lower(), "b": sp.objective_b.lower()}
    reviews = roles.pool.generate([ChatRequest(REVIEW.format(q=prompts[j].prompt, y=candidates[wi][j].text, **fill))
                                   for wi, j in flat], greedy)
    rewrites = []
    for wi, w in enumerate(sp.weights):  # MOD with the same w as the candidate under review
        reqs = [ChatRequest(REWRITE.format(q=prompts[j].prompt, y=candidates[wi][j].text, r=reviews[k].text, **fill))
                for k, (wj, j) in enumerate(flat) if wj == wi]
        rewrites.append(_mod(cfg, roles, reqs, [w])[0])
    n = len(prompts)
    return rewrites, [[reviews[wi * n + j].text for j in range(n)] for wi in range(len(sp.weights))]


class SipoRound:
    """SIPO's round; owns policy B (its trainer group and syncer) and the frozen scorer.

    Policy B's trainer gets the storage marker like every role (it writes checkpoints_b/); the
    scorer is spawned like every other role, restarts and re-issued calls included.
    """

    def __init__(self, cfg, roles, inputs):
        from selfsteer.actors.roles import steps_per_round
        from selfsteer.actors.syncer import WeightSyncer
        from selfsteer.actors.trainer_group import TrainerGroup
        from selfsteer.online.sepo_oracle import load_pairs
        from selfsteer.online.sipo_models import SipoScorer

        self.cfg, self.roles, self.inputs = cfg, roles, inputs
        spec, extra = method(cfg.algo), inputs.extra
        self.keys, self.loss_kwargs = spec.keys(cfg), spec.loss_kwargs(cfg)
        self.trainer_b = TrainerGroup(cfg, extra["policy_b"], cfg.rounds * steps_per_round(cfg), env=roles.marker)
        self.syncer_b = WeightSyncer(self.trainer_b, cfg)
        ray.get([e.load_policy_b.remote(extra["policy_b"]) for e in roles.pool.engines],
                timeout=cfg.ray.startup_timeout_s)
        self.scorer = roles.spawn(SipoScorer, extra["sft_path"], extra["policy_a"], extra["policy_b"],
                                  list(cfg.sipo.weights), cfg.reference, cfg.model,
                                  resources={"num_cpus": cfg.reference.num_cpus}, torch_threads=cfg.ray.torch_threads)
        self.rm_names = ray.get(self.scorer.names.remote(), timeout=cfg.ray.startup_timeout_s)
        self.file_pairs = ({r["prompt"]: (r["chosen"], r["rejected"]) for r in load_pairs(cfg.sipo.pairs_a)}
                           if cfg.sipo.pairs_a else None)

    def close(self) -> None:
        self.trainer_b.shutdown()

    def run(self, r: int) -> dict[str, float]:
        from selfsteer.online.sipo_models import originals

        cfg, roles, inputs = self.cfg, self.roles, self.inputs
        sp, timer, tok, run_dir = cfg.sipo, PhaseTimer(), inputs.tokenizer, inputs.run_dir
        round_dir = RunDir(run_dir).round(r, create=True)
        prompts, skipped = next_prompts(cfg, inputs, r)
        pairs = [(p, originals(cfg, p.prompt, self.file_pairs)) for p in prompts]
        prompts, origs = [p for p, o in pairs if o], [o for _, o in pairs if o]
        nw = len(sp.weights)
        with timer("generation"):
            requests = [ChatRequest(p.prompt) for p in prompts]
            cands = _mod(cfg, roles, requests, sp.weights) if prompts else []
        contexts = [encode_chat(tok, p.prompt) for p in prompts]
        orig_ids = [[answer_ids(tok, p.prompt, y, c) for y in o] for p, o, c in zip(prompts, origs, contexts)]
        rewards = lambda rows, names: implicit_rewards(  # noqa: E731  [N, M] per row set
            torch.tensor([rows[n] for n in names]).T, torch.tensor(rows["sft"])[:, None].expand(-1, len(names)), beta=sp.beta)
        n, cand_ctx = len(prompts), [contexts[j] for _ in range(nw) for j in range(len(prompts))]  # w-major
        score = lambda ctx, resp: roles.call("SIPO scorer", self.scorer,  # noqa: E731
                                             lambda: self.scorer.score.remote(ctx, resp))
        kept_rewrites, reviews, rewritten, cand_scores = 0, None, set(), None
        with timer("rewrite"):
            if sp.rewrite and prompts:
                rewrites, reviews = _rewrite(cfg, roles, prompts, cands)
                a = score(cand_ctx, [c.token_ids for row in cands for c in row])
                b = score(cand_ctx, [c.token_ids for row in rewrites for c in row])
                keep = keep_rewrite(rewards(b, ["A0", "B0"]), rewards(a, ["A0", "B0"])).tolist()
                for k, take in enumerate(keep):
                    if take:
                        cands[k // n][k % n] = rewrites[k // n][k % n]
                        rewritten.add((k // n, k % n))
                kept_rewrites = sum(keep)
                cand_scores = {m: [b[m][k] if take else a[m][k] for k, take in enumerate(keep)] for m in a}  # already scored
        with timer("reference"):  # candidates (w-major, unless scored above) then originals (y1, y2) of every prompt
            orig_ctx, orig_resp = [contexts[j] for j in range(n) for _ in range(2)], [y for o in orig_ids for y in o]
            if not n:
                scores = {}
            elif cand_scores is None:
                scores = score(cand_ctx + orig_ctx, [cands[wi][j].token_ids for wi in range(nw) for j in range(n)] + orig_resp)
            else:
                scores = {m: cand_scores[m] + rows for m, rows in score(orig_ctx, orig_resp).items()}
        records, items_a, items_b = [], [], []
        if n:
            all_r = rewards(scores, self.rm_names)  # [nw*n + 2n, M]
            cand_r = all_r[:nw * n].reshape(nw, n, -1).transpose(0, 1)  # [n, nw, M]
            orig_r = all_r[nw * n:].reshape(n, 2, -1)
            masks = pareto_filter(cand_r, orig_r)  # [n, nw]
            for j, p in enumerate(prompts):
                best = select_pareto_best(cand_r[j], masks[j])
                records.append({"prompt": p.prompt, "uuid": p.uid, "originals": list(origs[j]), "kept": best,
                                "candidates": [{"weight": w, "text": cands[wi][j].text, "rewards": cand_r[j, wi].tolist(),
                                                "pareto": bool(masks[j, wi]), "rewritten": (wi, j) in rewritten,
                                                **({"review": reviews[wi][j]} if reviews else {})}
                                               for wi, w in enumerate(sp.weights)],
                                "original_rewards": orig_r[j].tolist(), "reward_models": self.rm_names})
                if best is None:
                    continue
                c_ids, k_c = cands[best][j].token_ids, best * n + j
                for o in range(2):
                    k_o = nw * n + 2 * j + o
                    for items, ref in ((items_a, "A0"), (items_b, "B0")):
                        items.append({"chosen": {"context": contexts[j], "response": c_ids, "ref_logp": scores[ref][k_c]},
                                      "rejected": {"context": contexts[j], "response": orig_ids[j][o],
                                                   "ref_logp": scores[ref][k_o]}})
        write_jsonl(round_dir / "candidates.jsonl", records)  # on disk before any training on it
        metrics, _ = train_sync_save(cfg, roles, r, run_dir, timer, items_a, self.keys, self.loss_kwargs,
                                     inputs.cursor.state_dict())
        # Policy B's train -> sync -> save, not train_sync_save's: it loads into the engines' B slot
        # (copy_into, load_buckets_b), refreshes no reference and saves no resumable state.
        usable = equal_shards(len(items_b), len(self.trainer_b.ranks))
        with timer("train_b"):
            results_b = self.trainer_b.train(items_b[:usable], self.keys, self.loss_kwargs) if usable else []
        with timer("sync_b"):
            for k, engine in enumerate(roles.pool.engines):
                self.syncer_b.copy_into(engine, f"rollout engine {k} (policy B)", method="load_buckets_b")
        with timer("checkpoint_b"):
            if state_due(r, cfg.save_every, cfg.rounds):
                self.trainer_b.save_hf(str(RunDir(run_dir).checkpoint(r, "checkpoints_b")))
        metrics.update({f"train_b/{k}": v for k, v in (weighted_mean(results_b) if results_b else {}).items()
                        if not k.startswith("avg_logp/")})
        metrics.update(timer.seconds)
        kept = [rec for rec in records if rec["kept"] is not None]
        metrics.update({"data/prompts": float(n), "data/skipped_long_prompts": float(skipped),
                        "sipo/pareto_candidates": float(sum(c["pareto"] for rec in records for c in rec["candidates"])),
                        "sipo/kept_prompts": float(len(kept)), "sipo/kept_rate": len(kept) / n if n else 0.0,
                        "sipo/rewrites_kept": float(kept_rewrites), "data/pairs": float(len(items_a))})
        if kept:
            for m, name in enumerate(self.rm_names[:2]):
                metrics[f"sipo/reward_{name}_kept"] = sum(rec["candidates"][rec["kept"]]["rewards"][m] for rec in kept) / len(kept)
        return metrics

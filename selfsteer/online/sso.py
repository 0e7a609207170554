"""SSO's online round (and DPO's, on the same RLCD-style pairs): principles -> rollouts -> persist
-> reference -> train -> sync -> save.

Every phase is one named call on the run's actors, and all a round produced is on disk before
the trainer sees it. With `async_rounds` the next round's sampling and reference scoring run in
the background (`one_step_off`) while this one trains; `pairs.*` remedies live in `sso_pairs`.
`SsoRound` owns the round's state (the sampler ahead, the replay buffer).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from selfsteer.algorithms.diagnostics import pair_similarity, steering_gaps
from selfsteer.algorithms.registry import method
from selfsteer.data.chat import place_principle
from selfsteer.data.triples import Triple, drop_reason
from selfsteer.engines.base import ChatRequest, Sampling
from selfsteer.run.metrics import PhaseTimer
from selfsteer.online.common import sampling, save, train_sync_save
from selfsteer.utils.io import write_json, write_jsonl
from selfsteer.utils.run_dir import RunDir
from selfsteer.online.one_step_off import OneStepOff, Sampled
from selfsteer.online.sso_pairs import ReplayBuffer, rescore, score_and_select

logger = logging.getLogger(__name__)


class SsoRound:
    """SSO's (and DPO's) round; owns the one-step-off sampler and the replay buffer.

    The engines start from the trainer's weights (a resumed run's too): that round's policy.
    """

    def __init__(self, cfg, roles, inputs):
        self.cfg, self.roles, self.inputs = cfg, roles, inputs
        spec = method(cfg.algo)
        self.keys, self.loss_kwargs = spec.keys(cfg), spec.loss_kwargs(cfg)
        self.ahead = OneStepOff(cfg.async_rounds, inputs.resumed_round if cfg.rollout.update_weights else 0)
        self.replay = ReplayBuffer(cfg.pairs.replay, cfg.pairs.replay_rounds, cfg.seed)

    def close(self) -> None:
        """Stop the background sampler (before the roles it calls are shut down)."""
        self.ahead.close()

    def sample(self, r: int, policy_round: int) -> Sampled:
        """Principles, (y+, y-, y^o) per prompt on the engines' current weights, and reference scores."""
        cfg, roles, inputs, timer = self.cfg, self.roles, self.inputs, PhaseTimer()
        with timer("principles"):
            prompts, _, skipped_bare = inputs.drop_long(inputs.cursor.next_batch(cfg.data.prompts_per_round), None, r)
            pairs, principle_stats = roles.principles(prompts, r) if prompts else ([], {})
            prompts, pairs, skipped_long = inputs.drop_long(prompts, pairs, r)
            skipped_long += skipped_bare - principle_stats.get("writer_rejected", 0)  # those: principles/writer_rejected
        with timer("generation"):
            generations = roles.generate(_requests(cfg, prompts, pairs), sampling(cfg, r))
            triples, drops = _triples(prompts, pairs, generations, cfg.pairs.drop_similar)
            texts = [g.text for g in generations]  # (y+, y-, y^o) per prompt, before any triple is dropped
            signal = pair_similarity(texts[0::3], texts[1::3], texts[2::3])
        if triples and cfg.rollout.update_weights:  # colocated: engines asleep through scoring and training
            with timer("sleep"):  # (the round's sync wakes them; a no-op in the separate layout)
                slept = roles.sleep_engines()
        else:
            slept = {}
        with timer("reference"):  # the frozen start model: ready as soon as the responses are
            items, kept, filter_metrics = score_and_select(cfg, roles, triples, self.keys)  # pairs.filter, if on
        # s.signal carries what that sleep freed: the later sleep before training is then a no-op
        return Sampled(prompts, pairs, triples, drops, {**signal, **filter_metrics, **slept}, principle_stats,
                       skipped_long, policy_round, timer.seconds, self.keys, items, kept)

    def run(self, r: int) -> dict[str, float]:
        cfg, roles, inputs, ahead = self.cfg, self.roles, self.inputs, self.ahead
        start_time, timer, run_dir = time.perf_counter(), PhaseTimer(), inputs.run_dir
        round_dir = RunDir(run_dir).round(r, create=True)

        s = ahead.take(r) or self.sample(r, ahead.policy_round)  # sampled ahead in async mode
        timer.seconds.update(s.seconds)
        triples, drops, items = s.triples, s.drops, s.items
        with timer("persist"):
            _persist(round_dir, s, r)
        # Resume regenerates a round sampled ahead: the saved cursor is from before it drew its prompts.
        cursor_state = inputs.cursor.state_dict()
        if r < cfg.rounds:
            ahead.submit(r + 1, self.sample, r + 1, ahead.policy_round)
        if not triples:
            logger.warning("round %d: every triple was dropped (%s); nothing to train on", r, drops)
            timer.seconds["time/generation_wait"] = ahead.wait()
            with timer("checkpoint"):  # the policy is unchanged, but the round (and its cursor) is done
                save(cfg, roles, run_dir, r, cursor_state)
            return {**timer.seconds, **s.signal, "data/triples": 0.0,
                    **_count_metrics(s.principle_stats, drops, s.skipped_long)}
        replayed = self.replay.draw(len(items))  # pairs.replay: earlier rounds' items beside this round's
        if replayed and cfg.reference.refresh_every:
            replayed = rescore(roles, replayed, s.keys)
        self.replay.add(items)
        items = items + replayed
        metrics, trained = train_sync_save(cfg, roles, r, run_dir, timer, items, s.keys, self.loss_kwargs,
                                           cursor_state, sleep=True, wait=ahead.wait)
        if cfg.rollout.update_weights:
            ahead.policy_round = r
        metrics.update({f"train/{k}": v for k, v in trained.items() if k.startswith("avg_logp/")})
        metrics.update(s.signal, **steering_gaps({k.split("/", 1)[1]: v for k, v in trained.items()
                                                  if k.startswith("avg_logp/")}))
        metrics.update(_rollout_metrics(triples))
        metrics["rollout/staleness"] = float(s.staleness(r))
        metrics.update(_count_metrics(s.principle_stats, drops, s.skipped_long), **{
            "data/triples": float(len(triples)), "data/replayed": float(len(replayed)),
            "data/trained_pairs": float(len(items) - metrics["data/unused_for_shards"])})
        metrics["time/round"] = time.perf_counter() - start_time
        return metrics


def _requests(cfg, prompts, pairs) -> list[ChatRequest]:
    """Three per prompt, in order: good principle (x+), bad principle (x-), none (x)."""
    raw_sampling = None
    if cfg.rollout.sampling.raw_greedy:
        raw_sampling = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=cfg.rollout.sampling.max_new_tokens)
    out = []
    for p, pair in zip(prompts, pairs):
        out += [_principled(cfg, p.prompt, pair["good_system"]), _principled(cfg, p.prompt, pair["bad_system"]),
                ChatRequest(p.prompt, None, raw_sampling)]
    return out


def _principled(cfg, prompt: str, principle: str) -> ChatRequest:
    """x+ / x-: the principle where `principles.placement` puts it (selfsteer.data.chat.place_principle)."""
    return ChatRequest(*place_principle(prompt, principle, cfg.principles.placement))


def _triples(prompts, pairs, generations, max_similarity: float = 1.0) -> tuple[list[Triple], dict[str, int]]:
    triples, drops = [], {}
    for i, (p, pair) in enumerate(zip(prompts, pairs)):
        chosen, rejected, raw = generations[3 * i: 3 * i + 3]
        reason = drop_reason(chosen.text, rejected.text, raw.text, max_similarity)
        if reason:
            drops[reason] = drops.get(reason, 0) + 1
            continue
        triples.append(Triple(p.uid, p.index, p.prompt, pair["good_system"], pair["bad_system"],
                              chosen, rejected, raw, principles=pair))
    return triples, drops


def _persist(round_dir: Path, s: Sampled, r: int) -> None:
    """Write the round's principles and triples (JSONL) atomically, before any training on them."""
    write_jsonl(round_dir / "principles.jsonl", [{"prompt": p.prompt, "uuid": p.uid, "principles": [
        {"good_principle": "\n\n".join(pair["good_principles"]), "bad_principle": "\n\n".join(pair["bad_principles"])}],
        "dimensions": list(pair["dimensions"]), "source": pair["source"]} for p, pair in zip(s.prompts, s.pairs)])
    stamp = {"policy_version": s.policy_round, "staleness": s.staleness(r)}
    kept = s.kept or [True] * len(s.triples)  # pairs.filter's verdict: False = not trained on
    write_jsonl(round_dir / "triples.jsonl", [{**t.record(r), **stamp, "trained": k} for t, k in zip(s.triples, kept)])
    if s.drops:
        write_json(round_dir / "dropped.json", s.drops, indent=None)


def _rollout_metrics(triples: list[Triple]) -> dict[str, float]:
    n = len(triples)
    out = {}
    for name in ("chosen", "rejected", "raw"):
        gens = [getattr(t, name) for t in triples]
        out[f"rollout/{name}_tokens"] = sum(len(g.token_ids) for g in gens) / n
        out[f"rollout/{name}_truncated"] = sum(g.finish_reason == "length" for g in gens) / n
    return out


def _count_metrics(principle_stats: dict, drops: dict, skipped_long: int) -> dict[str, float]:
    out = {f"principles/{k}": float(v) for k, v in principle_stats.items()}
    out.update({f"data/dropped_{k}": float(v) for k, v in drops.items()})
    out["data/skipped_long_prompts"] = float(skipped_long)
    return out

"""SSO's online round (and DPO's, on the same RLCD-style pairs): principles -> rollouts -> persist
-> reference -> train -> sync -> save.

Every phase is one named call on the run's actors, and all a round produced is on disk before
the trainer sees it. With `async_rounds` the next round's sampling and reference scoring run in
the background (`one_step_off`) while this one trains; `pairs.*` remedies live in `sso_pairs`.
`start` keeps the round's state on `roles` (the sampler ahead, the replay buffer), like the
other methods' extra actors.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from selfsteer.run import checkpoint
from selfsteer.algorithms.diagnostics import pair_similarity, steering_gaps
from selfsteer.data.triples import SSO_ROWS, Triple, drop_reason
from selfsteer.engines.base import ChatRequest, Sampling
from selfsteer.run.metrics import PhaseTimer, weighted_mean
from selfsteer.online.common import new_round_dir, sampling, write_jsonl
from selfsteer.online.one_step_off import OneStepOff, Sampled
from selfsteer.online.sso_pairs import ReplayBuffer, rescore, score_and_select

logger = logging.getLogger(__name__)


def start(cfg, roles, inputs) -> None:
    """The one-step-off sampler and the replay buffer; the sampler stops before the roles do.

    The engines start from the trainer's weights (a resumed run's too): that round's policy.
    """
    roles.ahead = OneStepOff(cfg.async_rounds, inputs.resumed_round if cfg.rollout.update_weights else 0)
    roles.replay = ReplayBuffer(cfg.pairs.replay, cfg.pairs.replay_rounds, cfg.seed)
    _shutdown = roles.shutdown

    def shutdown():
        roles.ahead.close()
        _shutdown()
    roles.shutdown = shutdown


def sample_round(cfg, roles, inputs, r: int, policy_round: int) -> Sampled:
    """Principles, (y+, y-, y^o) per prompt on the engines' current weights, and reference scores."""
    timer, keys = PhaseTimer(), [k for k in SSO_ROWS if k in _required_keys(cfg)]
    with timer("principles"):
        prompts = inputs.cursor.next_batch(cfg.data.prompts_per_round)
        pairs, principle_stats = roles.principles(prompts, r)
        prompts, pairs, skipped_long = inputs.drop_long(prompts, pairs, r)
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
        items, kept, filter_metrics = score_and_select(cfg, roles, triples, keys)  # pairs.filter, if on
    return Sampled(prompts, pairs, triples, drops, {**signal, **filter_metrics, **slept}, principle_stats, skipped_long,
                   policy_round, timer.seconds, keys, items, kept)


def run_round(cfg, roles, inputs, r: int, run_dir: Path) -> dict[str, float]:
    start_time, timer = time.perf_counter(), PhaseTimer()
    ahead, replay = roles.ahead, roles.replay
    round_dir = new_round_dir(run_dir, r)

    s = ahead.take(r) or sample_round(cfg, roles, inputs, r, ahead.policy_round)  # sampled ahead in async mode
    timer.seconds.update(s.seconds)
    triples, drops, items = s.triples, s.drops, s.items
    with timer("persist"):
        _persist(round_dir, s, r)
    # Resume regenerates a round sampled ahead: the saved cursor is from before it drew its prompts.
    cursor_state = inputs.cursor.state_dict()
    if r < cfg.rounds:
        ahead.submit(r + 1, sample_round, cfg, roles, inputs, r + 1, ahead.policy_round)
    if not triples:
        logger.warning("round %d: every triple was dropped (%s); nothing to train on", r, drops)
        timer.seconds["time/generation_wait"] = ahead.wait()
        with timer("checkpoint"):  # the policy is unchanged, but the round (and its cursor) is done
            _save(cfg, roles, run_dir, r, cursor_state)
        return {**timer.seconds, **s.signal, "data/triples": 0.0, **_count_metrics(s.principle_stats, drops, s.skipped_long)}
    replayed = replay.draw(len(items))  # pairs.replay: earlier rounds' items beside this round's
    if replayed and cfg.reference.refresh_every:
        replayed = rescore(roles, replayed, s.keys)
    replay.add(items)
    items = items + replayed
    usable = len(items) - len(items) % len(roles.trainer.ranks)  # equal shards: ranks step together
    with timer("sleep"):
        slept = roles.sleep_engines() if usable else {}  # placement=colocated: a no-op if asleep since scoring
        slept.update({k: v for k, v in s.signal.items() if k.startswith("rollout/sleep")})  # what that sleep freed
    with timer("train"):
        results = roles.trainer.train(items[:usable], s.keys, _loss_kwargs(cfg)) if usable else []
    timer.seconds["time/generation_wait"] = ahead.wait()  # engines take new weights only when idle
    with timer("sync"):
        sync_stats = roles.syncer.sync(roles.pool.engines) if cfg.rollout.update_weights else {}
        ahead.policy_round = r if cfg.rollout.update_weights else ahead.policy_round
    if cfg.reference.refresh_every and r % cfg.reference.refresh_every == 0:
        with timer("reference_refresh"):  # async_rounds: round r+1 was scored already; it takes effect at r+2
            roles.refresh_reference()
    with timer("checkpoint"):
        _save(cfg, roles, run_dir, r, cursor_state)

    trained = weighted_mean(results) if results else {}
    metrics = {f"train/{k}": v for k, v in trained.items()}
    metrics.update(s.signal, **steering_gaps({k.split("/", 1)[1]: v for k, v in trained.items() if k.startswith("avg_logp/")}))
    metrics.update(_rollout_metrics(triples), **sync_stats, **slept, **timer.seconds)
    metrics["rollout/staleness"] = float(s.staleness(r))
    metrics["rollout/engines"] = float(len(roles.pool.engines))
    metrics["faults/engine_restarts_total"] = float(roles.pool.stats.get("engine_restarts", 0))
    metrics.update({f"faults/{k}_total": float(v) for k, v in roles.restarts.items()})
    metrics.update(_count_metrics(s.principle_stats, drops, s.skipped_long), **{"data/triples": float(len(triples)),
                   "data/unused_for_shards": float(len(items) - usable), "data/replayed": float(len(replayed)),
                   "data/trained_pairs": float(usable),
                   "train/optimizer_steps": float(sum(x["optimizer_steps"] for x in results[:1]))})
    metrics["time/round"] = time.perf_counter() - start_time
    (round_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _save(cfg, roles, run_dir: Path, r: int, cursor_state: dict) -> None:
    if r % cfg.save_every == 0 or r == cfg.rounds:
        roles.trainer.save_hf(str(run_dir / "checkpoints" / f"round_{r:04d}"))
    checkpoint.save_round(run_dir, r, roles.trainer, cursor_state, cfg)


def _required_keys(cfg) -> frozenset:
    from selfsteer.algorithms.sso import REQUIRED_KEYS

    return frozenset({"chosen", "rejected"}) if cfg.algo == "dpo" else REQUIRED_KEYS[cfg.loss.variant]


def _loss_kwargs(cfg) -> dict:
    return {"beta": cfg.loss.beta} if cfg.algo == "dpo" else dataclasses.asdict(cfg.loss)


def _requests(cfg, prompts, pairs) -> list[ChatRequest]:
    """Three per prompt, in order: good principle (x+), bad principle (x-), none (x)."""
    raw_sampling = None
    if cfg.rollout.sampling.raw_greedy:
        raw_sampling = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=cfg.rollout.sampling.max_new_tokens)
    out = []
    for p, pair in zip(prompts, pairs):
        out += [ChatRequest(p.prompt, pair["good_system"]), ChatRequest(p.prompt, pair["bad_system"]),
                ChatRequest(p.prompt, None, raw_sampling)]
    return out


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
        (round_dir / "dropped.json").write_text(json.dumps(s.drops))


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

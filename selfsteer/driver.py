"""The online SSO loop: principles -> rollouts -> persist -> reference -> train -> sync -> save.

The driver only calls actors (single controller); every phase is one named call, and all a
round produced is on disk before the trainer sees it. With `async_rounds` the next round's
sampling and reference scoring run in the background (selfsteer.pipeline) while this one trains.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

from tqdm.auto import tqdm

from selfsteer import checkpoint, online, preflight
from selfsteer.config import RunConfig, save_config, to_dict
from selfsteer.algorithms.diagnostics import pair_similarity, steering_gaps
from selfsteer.data.triples import SSO_ROWS, Triple, drop_reason
from selfsteer.engines.base import ChatRequest, Sampling
from selfsteer.metrics import MetricsWriter, PhaseTimer, SignalWatch, weighted_mean
from selfsteer.pair_selection import ReplayBuffer, rescore, score_and_select
from selfsteer.pipeline import OneStepOff, Sampled
from selfsteer.roles import Roles, prepare_inputs, start_roles

logger = logging.getLogger(__name__)


def run(cfg: RunConfig, on_round_start: Optional[Callable[[int, Roles], None]] = None, resume: bool = False,
        overwrite: bool = False) -> Path:
    """Run `cfg.rounds` online rounds (continuing after the last saved round if `resume`).

    `on_round_start(round, roles)` may act between rounds (e.g. `roles.resize_engines(n)`); a
    `control.json` written into the run directory (`selfsteer scale`) is applied the same way.
    Bad input raises `preflight.InputError` before Ray starts; an output_dir that already holds a
    run is refused unless `resume` (continue it) or `overwrite` (move it aside).
    """
    cfg, state = preflight.prepare_run(cfg, resume, overwrite)
    run_dir = Path(cfg.output_dir)
    logger.info("run directory: %s", run_dir)
    schedule = checkpoint.lr_schedule(run_dir, cfg, resume)  # reads the old config.yaml on an extension
    save_config(cfg, run_dir / "config.yaml")
    inputs = prepare_inputs(cfg, run_dir)
    inputs.schedule = schedule
    roles = start_roles(cfg, inputs)
    writer = None
    # The engines start from the trainer's weights (resumed ones too): that round's policy.
    ahead = OneStepOff(cfg.async_rounds, state["round"] if state and cfg.rollout.update_weights else 0)
    try:
        if state is not None:
            inputs.cursor.load_state_dict(state["cursor"])
            roles.trainer.load_state(str(run_dir / checkpoint.TRAINER_DIR), state["trainer_tag"])
            restored = checkpoint.repair_metrics(run_dir, state["round"])
            logger.info("resuming %s after round %d", run_dir, state["round"])
        writer = MetricsWriter(run_dir, cfg.tensorboard, cfg.wandb_project, to_dict(cfg),
                               purge_from=state["round"] + 1 if state else None)
        if state is not None:
            writer.restore(restored)
        watch = SignalWatch(cfg.signal)
        if cfg.rollout.update_weights:  # offline runs keep the start weights in the engines
            roles.syncer.sync(roles.pool.engines)  # forms the sync group and proves engines == trainer
        if state is not None and cfg.reference.refresh_every and state["round"] >= cfg.reference.refresh_every:
            roles.refresh_reference()  # the resumed trainer's weights (exact for refresh_every=1)
        replay = ReplayBuffer(cfg.pairs.replay, cfg.pairs.replay_rounds, cfg.seed)
        step = online.round_fn(cfg, roles, inputs, default=functools.partial(run_round, ahead=ahead, replay=replay))  # SSO here; others in selfsteer/online
        first = state["round"] + 1 if state else 1
        for round_index in tqdm(range(first, cfg.rounds + 1), desc="rounds", unit="round", initial=first - 1,
                                total=cfg.rounds):
            apply_control(run_dir, roles)
            if on_round_start is not None:
                on_round_start(round_index, roles)
            metrics = step(cfg, roles, inputs, round_index, run_dir)
            checkpoint.pause_point("before_metrics", run_dir, round_index)  # a kill here re-runs the round
            metrics.update(watch.update(metrics))
            writer.write(round_index, metrics)  # durable before state.json marks the round finished
            checkpoint.pause_point("after_metrics", run_dir, round_index)
            checkpoint.commit_round(run_dir)
            logger.info("round %d | %s", round_index, _summary(metrics))
            if watch.alerting:
                logger.warning("round %d: %s=%.3g out of bounds for %d rounds: the self-generated preference signal "
                               "is collapsing (see README 'Signal health')%s", round_index, cfg.signal.metric,
                               metrics.get(cfg.signal.metric, float("nan")), watch.streak,
                               "; stopping (signal.early_stop)" if cfg.signal.early_stop else "")
                if cfg.signal.early_stop:
                    break
    finally:
        ahead.close()
        if writer is not None:
            writer.close()
        roles.shutdown()
    return run_dir


def sample_round(cfg: RunConfig, roles: Roles, inputs, r: int, policy_round: int) -> Sampled:
    """Principles, (y+, y-, y^o) per prompt on the engines' current weights, and reference scores."""
    timer, keys = PhaseTimer(), [k for k in SSO_ROWS if k in _required_keys(cfg)]
    with timer("principles"):
        prompts = inputs.cursor.next_batch(cfg.data.prompts_per_round)
        pairs, principle_stats = roles.principles(prompts, r)
        prompts, pairs, skipped_long = inputs.drop_long(prompts, pairs, r)
    with timer("generation"):
        generations = roles.generate(_requests(cfg, prompts, pairs), _sampling(cfg, r))
        triples, drops = _triples(prompts, pairs, generations, cfg.pairs.drop_similar)
        texts = [g.text for g in generations]  # (y+, y-, y^o) per prompt, before any triple is dropped
        signal = pair_similarity(texts[0::3], texts[1::3], texts[2::3])
    with timer("reference"):  # the frozen start model: ready as soon as the responses are
        items, kept, filter_metrics = score_and_select(cfg, roles, triples, keys)  # pairs.filter, if on
    return Sampled(prompts, pairs, triples, drops, {**signal, **filter_metrics}, principle_stats, skipped_long,
                   policy_round, timer.seconds, keys, items, kept)


def run_round(cfg: RunConfig, roles: Roles, inputs, r: int, run_dir: Path, ahead: OneStepOff,
              replay: ReplayBuffer) -> dict[str, float]:
    start, timer = time.perf_counter(), PhaseTimer()
    round_dir = run_dir / "rounds" / f"round_{r:04d}"
    round_dir.mkdir(parents=True, exist_ok=True)

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
    metrics.update(_rollout_metrics(triples), **sync_stats, **timer.seconds)
    metrics["rollout/staleness"] = float(s.staleness(r))
    metrics["rollout/engines"] = float(len(roles.pool.engines))
    metrics["faults/engine_restarts_total"] = float(roles.pool.stats.get("engine_restarts", 0))
    metrics.update({f"faults/{k}_total": float(v) for k, v in roles.restarts.items()})
    metrics.update(_count_metrics(s.principle_stats, drops, s.skipped_long), **{"data/triples": float(len(triples)),
                   "data/unused_for_shards": float(len(items) - usable), "data/replayed": float(len(replayed)),
                   "data/trained_pairs": float(usable),
                   "train/optimizer_steps": float(sum(x["optimizer_steps"] for x in results[:1]))})
    metrics["time/round"] = time.perf_counter() - start
    (round_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _save(cfg: RunConfig, roles: Roles, run_dir: Path, r: int, cursor_state: dict) -> None:
    if r % cfg.save_every == 0 or r == cfg.rounds:
        roles.trainer.save_hf(str(run_dir / "checkpoints" / f"round_{r:04d}"))
    checkpoint.save_round(run_dir, r, roles.trainer, cursor_state)


def apply_control(run_dir: Path, roles: Roles) -> None:
    """Apply and consume `control.json` ({"num_engines": N}) written while the run is going."""
    path = run_dir / "control.json"
    if not path.is_file():
        return
    try:
        control = json.loads(path.read_text())
        num_engines = int(control["num_engines"])
    except (ValueError, KeyError, TypeError) as exc:
        logger.error("ignoring %s: expected {\"num_engines\": N}: %s", path, exc)
        path.rename(path.with_suffix(".rejected"))
        return
    roles.resize_engines(num_engines)
    path.rename(path.with_suffix(".applied"))


def request_scale(run_dir: str | Path, num_engines: int) -> Path:
    """Ask a running job to resize its rollout pool before its next round."""
    if num_engines < 1:
        raise ValueError(f"num_engines must be >= 1, got {num_engines}")
    path = Path(run_dir) / "control.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"num_engines": num_engines}))
    os.replace(tmp, path)
    return path


def _required_keys(cfg: RunConfig) -> frozenset:
    from selfsteer.algorithms.sso import REQUIRED_KEYS

    return frozenset({"chosen", "rejected"}) if cfg.algo == "dpo" else REQUIRED_KEYS[cfg.loss.variant]


def _loss_kwargs(cfg: RunConfig) -> dict:
    return {"beta": cfg.loss.beta} if cfg.algo == "dpo" else dataclasses.asdict(cfg.loss)


def _sampling(cfg: RunConfig, r: int) -> Sampling:
    s = cfg.rollout.sampling
    return Sampling(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, seed=cfg.seed * 100003 + r)


def _requests(cfg: RunConfig, prompts, pairs) -> list[ChatRequest]:
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
    def write(name: str, rows: list[dict]):
        tmp = round_dir / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, round_dir / name)

    write("principles.jsonl", [{"prompt": p.prompt, "uuid": p.uid, "principles": [
        {"good_principle": "\n\n".join(pair["good_principles"]), "bad_principle": "\n\n".join(pair["bad_principles"])}],
        "dimensions": list(pair["dimensions"]), "source": pair["source"]} for p, pair in zip(s.prompts, s.pairs)])
    stamp = {"policy_version": s.policy_round, "staleness": s.staleness(r)}
    kept = s.kept or [True] * len(s.triples)  # pairs.filter's verdict: False = not trained on
    write("triples.jsonl", [{**t.record(r), **stamp, "trained": k} for t, k in zip(s.triples, kept)])
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


def _summary(m: dict[str, float]) -> str:
    keys = ["train/loss", "train/loss/base", "train/loss/g", "train/w/mean", "train/rewards/margins",
            "train/rewards/accuracies", "data/triples", "rollout/staleness"]
    phases = " ".join(f"{k[5:]}={m[k]:.2f}" for k in PHASES if k in m)  # every phase, seconds
    return " ".join(f"{k.split('/', 1)[1]}={m[k]:.4g}" for k in keys if k in m) + f" | s: {phases}"


PHASES = ["time/principles", "time/generation", "time/persist", "time/reference", "time/train",
          "time/generation_wait", "time/sync", "time/reference_refresh", "time/checkpoint", "time/round"]

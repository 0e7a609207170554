"""The online loop: start the roles, run `cfg.rounds` rounds of `cfg.algo`, apply control, resume, shut down.

The driver only calls actors (single controller). What one round does is the method's module in
`selfsteer.online` (the method's round object, named in its spec in `algorithms.registry`), which
checkpoints before it returns; the driver writes each round's metrics and watches the signal's
health between rounds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

from tqdm.auto import tqdm

from selfsteer import online
from selfsteer.algorithms.registry import method
from selfsteer.run import checkpoint, preflight
from selfsteer.config.schema import RunConfig, save_config, to_dict
from selfsteer.run.metrics import MetricsWriter, SignalWatch, SteerWatch
from selfsteer.online.gold_eval import GoldEval
from selfsteer.actors.roles import Roles, prepare_inputs, start_roles
from selfsteer.utils.io import write_json
from selfsteer.utils.runtime import quiet_libraries

logger = logging.getLogger(__name__)


def run(cfg: RunConfig, on_round_start: Optional[Callable[[int, Roles], None]] = None, resume: bool = False,
        overwrite: bool = False) -> Path:
    """Run `cfg.rounds` online rounds (continuing after the last saved round if `resume`).

    `on_round_start(round, roles)` may act between rounds (e.g. `roles.resize_engines(n)`); a
    `control.json` written into the run directory (`selfsteer scale`) is applied the same way.
    Bad input raises `preflight.InputError` before Ray starts; an output_dir that already holds a
    run is refused unless `resume` (continue it) or `overwrite` (move it aside).
    """
    quiet_libraries(cfg)
    cfg, state = preflight.prepare_run(cfg, resume, overwrite)
    run_dir = Path(cfg.output_dir)
    logger.info("run directory: %s", run_dir)
    schedule = checkpoint.lr_schedule(run_dir, cfg, resume)  # reads the old config.yaml on an extension
    save_config(cfg, run_dir / "config.yaml")
    inputs = prepare_inputs(cfg, run_dir)
    inputs.schedule = schedule
    roles = start_roles(cfg, inputs)
    writer = method_round = None
    try:
        if state is not None:
            inputs.resumed_round = state["round"]
            inputs.cursor.load_state_dict(state["cursor"])
            roles.trainer.load_state(str(run_dir / checkpoint.TRAINER_DIR), state["trainer_tag"])
            restored = checkpoint.repair_metrics(run_dir, state["round"])
            logger.info("resuming %s after round %d", run_dir, state["round"])
        writer = MetricsWriter(run_dir, cfg.tensorboard, cfg.wandb_project, to_dict(cfg),
                               purge_from=state["round"] + 1 if state else None)
        if state is not None:
            writer.restore(restored)
        watch, steer = SignalWatch(cfg.signal), SteerWatch()
        if cfg.rollout.update_weights:  # offline runs keep the start weights in the engines
            roles.syncer.sync(roles.pool.engines)  # forms the sync group and proves engines == trainer
        if state is not None and cfg.reference.refresh_every and state["round"] >= cfg.reference.refresh_every:
            roles.refresh_reference()  # the resumed trainer's weights (exact for refresh_every=1)
        gold = GoldEval(cfg, run_dir, state["round"] if state else 0) if cfg.eval.every else None
        if gold is not None:
            writer.scalars(0, gold.start(roles.pool))  # the start weights: round 0 of the curves
        method_round = online.start_round(cfg, roles, inputs)
        first = state["round"] + 1 if state else 1
        for round_index in tqdm(range(first, cfg.rounds + 1), desc="rounds", unit="round", initial=first - 1,
                                total=cfg.rounds):
            apply_control(run_dir, roles)
            if on_round_start is not None:
                on_round_start(round_index, roles)
            metrics = method_round.run(round_index)
            if gold is not None:
                metrics.update(gold.after_round(round_index, roles.pool))
            checkpoint.pause_point("before_metrics", run_dir, round_index)  # a kill here re-runs the round
            metrics.update(watch.update(metrics))
            steer_metrics, steer_warning = steer.update(round_index, metrics)
            metrics.update(steer_metrics)
            writer.write(round_index, metrics)  # durable before state.json marks the round finished
            checkpoint.pause_point("after_metrics", run_dir, round_index)
            checkpoint.commit_round(run_dir)
            logger.info("round %d | %s", round_index, _summary(metrics, method(cfg.algo)))
            if steer_warning:
                logger.warning("%s\n%s\n%s", "!" * 100, steer_warning, "!" * 100)
            if watch.alerting:
                logger.warning("round %d: %s=%.3g out of bounds for %d rounds: the self-generated preference signal "
                               "is collapsing (see docs/guide/signal-health.md)%s", round_index, cfg.signal.metric,
                               metrics.get(cfg.signal.metric, float("nan")), watch.streak,
                               "; stopping (signal.early_stop)" if cfg.signal.early_stop else "")
                if cfg.signal.early_stop:
                    break
        if gold is not None:
            gold.finish()  # before/after summary and eval/gold.png
    finally:
        if method_round is not None:
            method_round.close()
        if writer is not None:
            writer.close()
        roles.shutdown()
    return run_dir


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
    write_json(path, {"num_engines": num_engines}, indent=None)
    return path


def _summary(m: dict[str, float], spec) -> str:
    """The round's line: the method's own summary columns, then its phases in seconds."""
    phases = " ".join(f"{k[5:]}={m[k]:.2f}" for k in spec.phases if k in m)
    return " ".join(f"{k.split('/', 1)[1]}={m[k]:.4g}" for k in spec.summary if k in m) + f" | s: {phases}"

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
from selfsteer.run.on_topic import OnTopicWatch
from selfsteer.run.startup_checks import collect_fallbacks
from selfsteer.online.gold_eval import GoldEval
from selfsteer.actors.inputs import prepare_inputs
from selfsteer.actors.roles import Roles, start_roles
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
    cfg, state, claim = preflight.prepare_run(cfg, resume, overwrite)
    run_dir = Path(cfg.output_dir)
    logger.info("run directory: %s", run_dir)
    writer = roles = method_round = None
    try:
        try:  # a start refused here leaves the directory as it found it
            schedule = checkpoint.lr_schedule(run_dir, cfg, resume, write=False)  # reads the old config.yaml
            inputs = prepare_inputs(cfg, run_dir, keep_prompts=resume)
            inputs.schedule = schedule
            topic = OnTopicWatch(cfg.signal.on_topic)  # loads its encoder (or names the missing extra) before Ray
            check_placement(cfg)  # starts Ray: a config the cluster cannot place fails before any file is written
            write_run_files(cfg, run_dir, schedule)
            restored = checkpoint.repair_metrics(run_dir, state["round"]) if state is not None else {}
            roles = start_roles(cfg, inputs)
        except BaseException:
            claim.undo()  # a new run's files go; a resume wrote nothing before its checks passed
            raise
        if state is not None:
            inputs.resumed_round = state["round"]
            inputs.cursor.load_state_dict(state["cursor"])
            roles.trainer.load_state(str(run_dir / checkpoint.TRAINER_DIR), state["trainer_tag"])
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
        fallbacks = collect_fallbacks(roles)  # start-up probes that turned a feature off: in every round's metrics
        first = state["round"] + 1 if state else 1
        for round_index in tqdm(range(first, cfg.rounds + 1), desc="rounds", unit="round", initial=first - 1,
                                total=cfg.rounds):
            apply_control(run_dir, roles)
            if on_round_start is not None:
                on_round_start(round_index, roles)
            metrics = method_round.run(round_index)
            metrics.update(fallbacks)
            if gold is not None:
                metrics.update(gold.after_round(round_index, roles.pool))
            checkpoint.pause_point("before_metrics", run_dir, round_index)  # a kill here re-runs the round
            metrics.update(watch.update(metrics))
            steer_metrics, steer_warning = steer.update(round_index, metrics)
            metrics.update(steer_metrics)
            topic_metrics, topic_warning = topic.score_round(run_dir, round_index)
            metrics.update(topic_metrics)
            writer.write(round_index, metrics)  # durable before state.json marks the round finished
            checkpoint.pause_point("after_metrics", run_dir, round_index)
            checkpoint.commit_round(run_dir)
            logger.info("round %d | %s", round_index, _summary(metrics, method(cfg.algo)))
            for warning in (steer_warning, topic_warning):
                if warning:
                    logger.warning("%s\n%s\n%s", "!" * 100, warning, "!" * 100)
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
        if roles is not None:
            roles.shutdown()
        claim.release()
    return run_dir


def check_placement(cfg: RunConfig) -> None:
    """Start (or attach to) Ray and refuse a config whose roles the cluster cannot place."""
    import ray

    from selfsteer.actors.ray_start import init_ray
    from selfsteer.plan.planner import check_cluster, nodes_from_ray

    init_ray(cfg)
    check_cluster(cfg, nodes_from_ray(ray.nodes()))


def write_run_files(cfg: RunConfig, run_dir: Path, schedule: list[int]) -> None:
    """The run's own files, once every check passed: lr schedule, resolved config, run-defining keys."""
    checkpoint.write_schedule(run_dir, schedule)
    save_config(cfg, run_dir / "config.yaml")
    keys = run_dir / preflight.RUN_KEYS_FILE
    if not keys.is_file():  # written once; a run from before it gets its (checked) keys on the first resume
        checkpoint.write_durably(keys, json.dumps(preflight.run_keys(cfg), indent=2))


def apply_control(run_dir: Path, roles: Roles) -> None:
    """Apply and consume `control.json` ({"num_engines": N}) written while the run is going.

    A request the cluster cannot place is set aside (control.rejected) with one logged line, and
    the run goes on at its current size: starting engines Ray cannot place would wait out
    ray.startup_timeout_s and end the run.
    """
    path = run_dir / "control.json"
    if not path.is_file():
        return
    try:
        control = json.loads(path.read_text())
        num_engines = int(control["num_engines"])
        if num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {num_engines}")
    except (ValueError, KeyError, TypeError) as exc:
        logger.error("ignoring %s: expected {\"num_engines\": N} with N >= 1: %s", path, exc)
        path.rename(path.with_suffix(".rejected"))
        return
    problem = scale_problem(roles.cfg, num_engines, len(roles.pool.engines))
    if problem:
        logger.error("scale request %s rejected (moved to %s); the run goes on with %d rollout engine(s): %s",
                     path, path.with_suffix(".rejected").name, len(roles.pool.engines), problem)
        path.rename(path.with_suffix(".rejected"))
        return
    roles.resize_engines(num_engines)
    path.rename(path.with_suffix(".applied"))


def scale_problem(cfg: RunConfig, num_engines: int, current: int) -> Optional[str]:
    """Why the running cluster cannot hold `num_engines` rollout engines, or None when it can: the
    whole run at the new size must fit the cluster's nodes, and the added engines what is free now."""
    import dataclasses

    import ray

    from selfsteer.plan.planner import ClusterTooSmallError, check_cluster, nodes_from_ray

    resized = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, num_engines=num_engines))
    try:
        check_cluster(resized, nodes_from_ray(ray.nodes()))
    except ClusterTooSmallError as exc:
        return f"rollout.num_engines={num_engines}: {exc}"
    added = num_engines - current
    if added <= 0:
        return None
    rc, free = cfg.rollout, ray.available_resources()
    for resource, each in (("CPU", rc.num_cpus), ("GPU", rc.num_gpus * rc.tensor_parallel_size)):
        if added * each > free.get(resource, 0.0) + 1e-9:
            return (f"{added} more engine(s) need {resource} {added * each:g}, and {free.get(resource, 0.0):g} is "
                    "free on the cluster now")
    return None


class ScaleError(ValueError):
    """A `selfsteer scale` request that cannot reach a running run; the message says why."""


def request_scale(run_dir: str | Path, num_engines: int) -> Path:
    """Ask a running job to resize its rollout pool before its next round (control.json).

    Raises:
        ScaleError: `num_engines` < 1, or `run_dir` holds no run that is going now (missing, no
            run, finished, or its driver is not running).
    """
    from selfsteer.run.rundir import is_locked

    if num_engines < 1:
        raise ScaleError(f"--engines {num_engines}: a run needs at least 1 rollout engine")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ScaleError(f"{run_dir}: no such run directory")
    if not (run_dir / "config.yaml").is_file():
        raise ScaleError(f"{run_dir} holds no run (no config.yaml); give the output_dir of a running `selfsteer run`")
    try:
        state = checkpoint.load_state(run_dir)
        import yaml

        rounds = int(yaml.safe_load((run_dir / "config.yaml").read_text())["rounds"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ScaleError(f"{run_dir}: cannot read the run's progress: {exc}") from None
    if state is not None and state["round"] >= rounds and not is_locked(run_dir):
        raise ScaleError(f"the run in {run_dir} has finished ({state['round']} of {rounds} rounds); to go on, "
                         f"`selfsteer run --resume {run_dir} rounds=N rollout.num_engines={num_engines}`")
    if not is_locked(run_dir):
        raise ScaleError(f"no run is going in {run_dir} (its driver is not running); resume it at the new size "
                         f"with `selfsteer run --resume {run_dir} rollout.num_engines={num_engines}`")
    path = run_dir / "control.json"
    write_json(path, {"num_engines": num_engines}, indent=None)
    return path


def _summary(m: dict[str, float], spec) -> str:
    """The round's line: the method's own summary columns, then its phases in seconds."""
    phases = " ".join(f"{k[5:]}={m[k]:.2f}" for k in spec.phases if k in m)
    return " ".join(f"{k.split('/', 1)[1]}={m[k]:.4g}" for k in spec.summary if k in m) + f" | s: {phases}"

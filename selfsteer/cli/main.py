"""`selfsteer` console script: one parser, one dispatch (`cli.dispatch`).

Every subcommand (here: run, scale, plan; `cli.recipe` and `cli.tools` add the rest) is an argparse
subparser whose `set_defaults(handler=fn)` names the function called with the parsed arguments.
`launch` is the one run path: the `run` handler and the `ray job submit` entry
(`ray_jobs/online_sso.py`) both call it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from selfsteer.cli.dispatch import UsageError, dispatch


def build_parser() -> argparse.ArgumentParser:
    """The whole `selfsteer` parser: every subcommand with its handler."""
    parser = argparse.ArgumentParser(prog="selfsteer", description="Online self-alignment (SSO) on Ray actors.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    from selfsteer.cli import recipe, tools

    recipe.add_subcommands(sub)  # the seed recipe's five phases, pipeline, converter, serve
    tools.add_subcommands(sub)  # import-gguf, eval, export, probe
    return parser


def add_subcommands(sub) -> None:
    """run, scale and plan."""
    run = sub.add_parser("run", help="run online rounds", description="selfsteer run CONFIG [key=value ...]")
    run.add_argument("config", nargs="?", help="YAML config (e.g. configs/tiny_cpu.yaml); omit with --resume")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rounds=5 rollout.num_engines=2")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run after its last finished round")
    run.add_argument("--overwrite", action="store_true",
                     help="output_dir holds a run: move it aside to OUTPUT_DIR.old-<time> and start afresh")
    run.add_argument("--log-level", default="INFO")
    run.set_defaults(handler=_run, more_overrides=True)
    scale = sub.add_parser("scale", help="resize a running job's rollout pool before its next round")
    scale.add_argument("run_dir")
    scale.add_argument("--engines", type=int, required=True)
    scale.set_defaults(handler=_scale)
    plan = sub.add_parser("plan", help="where each role goes and its GPU memory estimate; exit 2 if it does not fit",
                          description="selfsteer plan CONFIG [key=value ...] "
                                      "[--nodes N --gpus-per-node G --gpu h100-80gb | --gpu-memory-gib M]")
    plan.add_argument("config")
    plan.add_argument("overrides", nargs="*", help="dotted overrides, as for run")
    plan.add_argument("--nodes", type=int, default=1)
    plan.add_argument("--gpus-per-node", type=int, default=8)
    plan.add_argument("--gpu", default=None, help="card: h100-80gb (default), h200-141gb, a100-80gb, a100-40gb")
    plan.add_argument("--gpu-memory-gib", type=float, default=None,
                      help="usable GiB per GPU (what torch.cuda.mem_get_info reports); overrides the card's")
    plan.add_argument("--host-memory-gib", type=float, default=None, help="host RAM per node; checked only when given")
    plan.add_argument("--cpus-per-node", type=float, default=None, help="checked only when given")
    plan.set_defaults(handler=_plan, more_overrides=True)


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


def launch(config_path: str | None, overrides: Sequence[str], *, resume: str | None = None,
           overwrite: bool = False, log_level: str = "INFO", forced: Sequence[str] = ()) -> int:
    """Load the config, run it, print the outcome; the exit status (2: bad config, input or cluster).

    Args:
        config_path: the YAML; with `resume`, None (the run's own config.yaml is read) or a first override.
        overrides: dotted `key=value` words.
        resume: a run directory to continue after its last finished round.
        overwrite: move an output_dir holding a run aside and start afresh.
        forced: overrides applied after the user's (the Ray job attaches to its cluster with them).

    Raises:
        UsageError: `resume` with `overwrite`, or neither a config nor `resume`.
    """
    # force: a second call in one process (tests) logs to the stderr of now, not a closed one
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    from selfsteer.config.schema import ConfigError, load_config

    overrides = list(overrides)
    if resume and config_path and "=" not in config_path:
        print(f"selfsteer: run --resume {resume} continues that run with its own config ({resume}/config.yaml); "
              f"drop {config_path!r}, or give key=value overrides", file=sys.stderr)
        return 2
    if resume:
        # The run's own resolved config; positional words are all overrides (e.g. rounds=6).
        overrides = ([config_path] if config_path else []) + overrides + [f"output_dir={resume}"]
        config_path = str(Path(resume) / "config.yaml")
    elif config_path is None:
        raise UsageError("run needs a CONFIG or --resume RUN_DIR")
    try:
        cfg = load_config(config_path, overrides, forced)
    except ConfigError as exc:
        print(f"selfsteer: {exc}", file=sys.stderr)
        return 2
    if resume and overwrite:
        raise UsageError("--resume continues the run in RUN_DIR; --overwrite moves it aside: give one")
    from selfsteer.plan.planner import ClusterTooSmallError
    from selfsteer.run.driver import run as run_online
    from selfsteer.run.failures import disk_full
    from selfsteer.run.preflight import InputError

    try:
        run_dir = run_online(cfg, resume=bool(resume), overwrite=overwrite)
    except (ClusterTooSmallError, InputError) as exc:  # before any actor started: the message says what to change
        print(f"selfsteer: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        full = disk_full(exc, cfg.output_dir)
        if full is None:
            raise
        print(f"selfsteer: {full}; finished rounds are kept: free space, then "
              f"`selfsteer run --resume {cfg.output_dir}`", file=sys.stderr)
        return 2
    print(f"selfsteer: finished {cfg.rounds} round(s); outputs in {run_dir}")
    return 0


def _run(args: argparse.Namespace) -> int:
    return launch(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite, log_level=args.log_level)


def _scale(args: argparse.Namespace) -> int:
    from selfsteer.run.driver import ScaleError, request_scale

    try:
        print(f"selfsteer: wrote {request_scale(args.run_dir, args.engines)}")
    except ScaleError as exc:
        print(f"selfsteer: scale: {exc}", file=sys.stderr)
        return 2
    return 0


def _plan(args: argparse.Namespace) -> int:
    from selfsteer.plan.planner import main as plan_main

    return plan_main(args)


if __name__ == "__main__":
    sys.exit(main())

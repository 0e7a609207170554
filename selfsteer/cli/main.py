"""`selfsteer` console script."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfsteer", description="Online self-alignment (SSO) on Ray actors.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run online rounds", description="selfsteer run CONFIG [key=value ...]")
    run.add_argument("config", nargs="?", help="YAML config (e.g. configs/tiny_cpu.yaml); omit with --resume")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rounds=5 rollout.num_engines=2")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run after its last finished round")
    run.add_argument("--overwrite", action="store_true",
                     help="output_dir holds a run: move it aside to OUTPUT_DIR.old-<time> and start afresh")
    run.add_argument("--log-level", default="INFO")
    scale = sub.add_parser("scale", help="resize a running job's rollout pool before its next round")
    scale.add_argument("run_dir")
    scale.add_argument("--engines", type=int, required=True)
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
    from selfsteer.cli import recipe as recipe_cli

    recipe_cli.add_subcommands(sub)  # the seed recipe's five phases, pipeline, converter, serve
    from selfsteer.cli import tools as tools_cli

    tools_cli.add_subcommands(sub)  # import-gguf, eval, export
    # Overrides may follow an option (`run CONFIG --overwrite rounds=3`): argparse leaves them over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("run", "plan") or any(word.startswith("-") or "=" not in word for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if args.command in recipe_cli.COMMANDS:
        return recipe_cli.dispatch(args)
    if args.command == "plan":
        from selfsteer.plan.planner import main as plan_main

        return plan_main(args)
    if args.command in tools_cli.COMMANDS:
        return tools_cli.dispatch(args)
    if args.command == "scale":
        from selfsteer.run.driver import ScaleError, request_scale

        try:
            print(f"selfsteer: wrote {request_scale(args.run_dir, args.engines)}")
        except ScaleError as exc:
            print(f"selfsteer: scale: {exc}", file=sys.stderr)
            return 2
        return 0

    # force: a second main() in one process (tests) logs to the stderr of now, not a closed one
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    from selfsteer.config.schema import ConfigError, load_config

    config_path, overrides = args.config, list(args.overrides)
    if args.resume and config_path and "=" not in config_path:
        print(f"selfsteer: run --resume {args.resume} continues that run with its own config ({args.resume}/config.yaml); "
              f"drop {config_path!r}, or give key=value overrides", file=sys.stderr)
        return 2
    if args.resume:
        # The run's own resolved config; positional words are all overrides (e.g. rounds=6).
        overrides = ([config_path] if config_path else []) + overrides + [f"output_dir={args.resume}"]
        config_path = str(Path(args.resume) / "config.yaml")
    elif config_path is None:
        parser.error("run needs a CONFIG or --resume RUN_DIR")
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as exc:
        print(f"selfsteer: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        from selfsteer.run.driver import run as run_online
        from selfsteer.run.preflight import InputError

        from selfsteer.plan.planner import ClusterTooSmallError

        if args.resume and args.overwrite:
            parser.error("--resume continues the run in RUN_DIR; --overwrite moves it aside: give one")
        from selfsteer.run.failures import disk_full

        try:
            run_dir = run_online(cfg, resume=bool(args.resume), overwrite=args.overwrite)
        except (ClusterTooSmallError, InputError) as exc:
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


if __name__ == "__main__":
    sys.exit(main())

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
    args = parser.parse_args(argv)
    if args.command in recipe_cli.COMMANDS:
        return recipe_cli.dispatch(args)
    if args.command == "plan":
        from selfsteer.plan.planner import main as plan_main

        return plan_main(args)
    if args.command in tools_cli.COMMANDS:
        return tools_cli.dispatch(args)
    if args.command == "scale":
        from selfsteer.run.driver import request_scale

        print(f"selfsteer: wrote {request_scale(args.run_dir, args.engines)}")
        return 0

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from selfsteer.config.schema import ConfigError, load_config

    config_path, overrides = args.config, list(args.overrides)
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
        try:
            run_dir = run_online(cfg, resume=bool(args.resume), overwrite=args.overwrite)
        except (ClusterTooSmallError, InputError) as exc:
            print(f"selfsteer: {exc}", file=sys.stderr)
            return 2
        print(f"selfsteer: finished {cfg.rounds} round(s); outputs in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

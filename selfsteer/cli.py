"""`selfsteer` console script."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfsteer", description="Online self-alignment (SSO) on Ray actors.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run online rounds", description="selfsteer run CONFIG [key=value ...]")
    run.add_argument("config", help="YAML config (e.g. configs/tiny_cpu.yaml)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rounds=5 rollout.num_engines=2")
    run.add_argument("--log-level", default="INFO")
    scale = sub.add_parser("scale", help="resize a running job's rollout pool before its next round")
    scale.add_argument("run_dir")
    scale.add_argument("--engines", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "scale":
        from selfsteer.driver import request_scale

        print(f"selfsteer: wrote {request_scale(args.run_dir, args.engines)}")
        return 0

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from selfsteer.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"selfsteer: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        from selfsteer.driver import run as run_online

        run_dir = run_online(cfg)
        print(f"selfsteer: finished {cfg.rounds} round(s); outputs in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

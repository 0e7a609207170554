"""`ray job submit` entry: run online SSO on the cluster this job was submitted to.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/online_sso.py --config configs/tiny_cpu.yaml rounds=5
    # a later job continues it (output_dir must be shared storage, absolute):
    ray job submit ... -- python ray_jobs/online_sso.py --resume /shared/runs/sso
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config; omit with --resume")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (its config.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from selfsteer.config.schema import ConfigError, load_config
    from selfsteer.run.driver import run

    config_path, overrides = args.config, list(args.overrides)
    if args.resume:  # the run's own resolved config, as `selfsteer run --resume`
        if config_path:
            parser.error("--resume reads RUN_DIR/config.yaml; give overrides (e.g. rounds=6), not --config")
        overrides = overrides + [f"output_dir={args.resume}"]
        config_path = f"{args.resume.rstrip('/')}/config.yaml"
    elif not config_path:
        parser.error("give --config CONFIG or --resume RUN_DIR")
    try:
        # A submitted job always attaches to its cluster rather than starting Ray in-process.
        cfg = load_config(config_path, [*overrides, "ray.address=auto", "ray.num_cpus=null"])
    except ConfigError as exc:
        print(f"online_sso: {exc}", file=sys.stderr)
        return 2
    from selfsteer.plan.planner import ClusterTooSmallError
    from selfsteer.run.preflight import InputError

    try:
        run_dir = run(cfg, resume=bool(args.resume))
    except (ClusterTooSmallError, InputError) as exc:  # before any actor started: the message says what to change
        print(f"online_sso: {exc}", file=sys.stderr)
        return 2
    print(f"online_sso: finished {cfg.rounds} round(s); outputs in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

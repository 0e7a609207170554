"""`ray job submit` entry: run online SSO on the cluster this job was submitted to.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/online_sso.py --config configs/tiny_cpu.yaml rounds=5
    # a later job continues it (output_dir must be shared storage, absolute):
    ray job submit ... -- python ray_jobs/online_sso.py --resume /shared/runs/sso
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the job's flags and hand them to `selfsteer run`'s own run path (`selfsteer.cli.main.launch`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config; omit with --resume")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (its config.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    if args.resume and args.config:
        parser.error("--resume reads RUN_DIR/config.yaml; give overrides (e.g. rounds=6), not --config")
    if not (args.resume or args.config):
        parser.error("give --config CONFIG or --resume RUN_DIR")
    from selfsteer.cli.main import launch

    # A submitted job always attaches to its cluster rather than starting Ray in-process.
    return launch(args.config, args.overrides, resume=args.resume, forced=("ray.address=auto", "ray.num_cpus=null"))


if __name__ == "__main__":
    sys.exit(main())

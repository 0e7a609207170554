"""SIPO's own success measure on the alignment task: does the re-aligned MOD front dominate the initial one?

For each seed's SIPO run of `benchmarks/alignment.py`, greedy MOD decoding on held-out prompts at
every w, with the stage-0 policies (pi_A0, pi_B0) and with the last round's (A, B); mean gold of
objective A's and objective B's rules per w, and whether the re-aligned front weakly dominates.

    python benchmarks/sipo_front.py --method sipo --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsteer.config.schema import load_config  # noqa: E402
from selfsteer.utils.run_dir import RunDir  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="sipo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--results", default=str(REPO / "results" / "alignment"))
    ap.add_argument("--eval-prompts", type=int, default=96)
    args = ap.parse_args(argv)
    from selfsteer.benchmark import evaluation as E
    from selfsteer.online.sipo_models import stage0
    from selfsteer.actors.inputs import resolve_model
    from selfsteer.toy import task as T

    out, lines = {}, []
    for seed in args.seeds:
        run_dir = Path(args.results) / "runs" / args.method / f"seed{seed}"
        cfg = load_config(run_dir / "config.yaml")
        objectives = (cfg.sipo.objective_a, cfg.sipo.objective_b)
        _, heldout = T.split_prompts(cfg.task.split_seed)
        prompts = T.balanced(heldout, args.eval_prompts, seed=cfg.task.split_seed)
        start = stage0(cfg, resolve_model(cfg))  # cached: the run's own pi_A0, pi_B0
        run, r = RunDir(run_dir), RunDir(run_dir).numbered()[-1][0]
        last = RunDir.tag(r)
        fronts = {"stage0": E.mod_front(start["policy_a"], start["policy_b"], prompts, list(cfg.sipo.weights), objectives),
                  last: E.mod_front(str(run.checkpoint(r)), str(run.checkpoint(r, "checkpoints_b")), prompts,
                                    list(cfg.sipo.weights), objectives)}
        a, b = objectives
        dominates = all(n[a] >= o[a] and n[b] >= o[b] for o, n in zip(fronts["stage0"], fronts[last]))
        out[str(seed)] = {"fronts": fronts, "dominates": dominates}
        for name, front in fronts.items():
            cells = " ".join(f"w={p['weight']:g}: {a} {p[a]:.2f} / {b} {p[b]:.2f} (gold {p['gold']:.2f})" for p in front)
            lines.append(f"seed {seed} {name:>10}: {cells}")
        lines.append(f"seed {seed}: re-aligned front weakly dominates stage 0: {dominates}")
    path = Path(args.results) / f"{args.method}_front.json"
    path.write_text(json.dumps(out, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

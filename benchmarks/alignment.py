"""The alignment benchmark: does online SSO align a model, next to its baselines, on a gold-scored task?

Every method is a real `selfsteer run` (the product's CLI, actors and trainer) on
`configs/alignment_tiny.yaml`, differing only by config overrides; every round's HF checkpoint is
then scored on held-out prompts with the task's program-computed gold reward.

    python benchmarks/alignment.py                                  # all methods, seeds 0 1 2
    python benchmarks/alignment.py --methods online_sso_v1,rlcd_dpo --seeds 0 --rounds 6

Writes <out>/results.json (method -> seed -> per-round and final figures), <out>/alignment.md
and <out>/alignment.png; prints the table. The seed picks the start model (its SFT seed) and
the run's sampling, so the spread covers both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsteer.benchmark.report import pair_signal, plot, table  # noqa: E402
from selfsteer.config.schema import load_config  # noqa: E402
from selfsteer.utils.run_dir import RunDir  # noqa: E402

# method -> config overrides (on top of configs/alignment_tiny.yaml). Offline methods keep the
# engines on the start weights, so every round's pairs come from the start model.
METHODS = {
    "start": None,
    "rlcd_dpo": ["algo=dpo", "rollout.update_weights=false"],
    "offline_sso": ["rollout.update_weights=false"],
    "online_sso_v1": [],
    "online_sso_v2": ["loss.variant=v2", "rollout.sampling.raw_greedy=true"],
    "online_v1_no_w": ["loss.use_w=false"],
    "online_v1_no_g": ["loss.use_g=false"],
    # The other self-alignment methods on the same task (SFT targets y* meet every gold rule; the
    # SePO oracle is DPO-trained on task pairs from training prompts, see sepo_oracle.task_pairs).
    "self_contrast": ["algo=self_contrast", "self_contrast.n_samples=8", "self_contrast.k=4"],
    "sepo": ["algo=sepo", "sepo.oracle_train_pairs=512", "sepo.oracle_steps=200"],
    # SIPO's row is policy A (Politeness); policy B (Length) is scored too, as "sipo_policy_b".
    "sipo": ["algo=sipo", "rollout.backend=hf_mod", "sipo.stage0_lr=3e-4", "data.prompts_per_round=32"],
    "sipo_gentle": ["algo=sipo", "rollout.backend=hf_mod", "sipo.stage0_lr=3e-4", "sipo.stage0_steps=40",
                    "data.prompts_per_round=32", "trainer.lr=3e-5"],  # a tenth of the shared lr, shorter stage 0
    # Signal-health remedies on online SSO v1 (benchmarks/remedies.py compares them).
    "v1_filter": ["pairs.filter=v1"],
    "filter_refresh": ["pairs.filter=v1", "reference.refresh_every=1"],
    "drop_similar": ["pairs.drop_similar=0.9"],
    "replay": ["pairs.replay=1.0", "pairs.replay_rounds=4"],
    "ref_refresh": ["reference.refresh_every=1"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--config", default=str(REPO / "configs" / "alignment_tiny.yaml"))
    ap.add_argument("--out", default=str(REPO / "results" / "alignment"))
    ap.add_argument("--eval-prompts", type=int, default=96)
    ap.add_argument("--samples", type=int, default=4, help="sampled responses per held-out prompt")
    ap.add_argument("--cache-dir", default=None, help="start-model cache (default ~/.cache/selfsteer)")
    ap.add_argument("--eval-every", type=int, default=1, help="score every N-th round's checkpoint (and the last)")
    ap.add_argument("--lock", default=None, help="hold this file lock (flock) during each run, to share a machine")
    ap.add_argument("--report-only", action="store_true", help="rebuild the table and plot from results.json")
    ap.add_argument("--rerun", action="store_true", help="redo (method, seed) pairs already in results.json")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides for every run")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    derived = {f"{m}_policy_b" for m in METHODS if m.startswith("sipo")}  # scored from a SIPO run, not run
    unknown = sorted(set(methods) - set(METHODS) - derived)
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    from transformers.utils import logging as hf_logging

    from selfsteer.benchmark import evaluation as E

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per evaluated checkpoint drowns the log
    from selfsteer.actors.inputs import resolve_model
    from selfsteer.toy import task as T

    settings = E.EvalSettings(prompts=args.eval_prompts, samples=args.samples)
    started = time.time()
    for seed in [] if args.report_only else args.seeds:
        # The runs' own eval is off: every checkpoint is scored here, with the start model's steerability.
        common = [f"seed={seed}", f"model.toy.seed={seed}", f"rounds={args.rounds}", "eval.every=0", *args.set]
        if args.cache_dir:
            common.append(f"model.cache_dir={args.cache_dir}")
        cfg = load_config(args.config, common)
        _, heldout = T.split_prompts(cfg.task.split_seed)
        prompts = T.balanced(heldout, settings.prompts, seed=cfg.task.split_seed)
        with _locked(args.lock):
            t0 = time.time()
            start_dir = resolve_model(cfg)  # the SFT start model, built once per seed and cached
            build_s = time.time() - t0
            base = E.evaluate(start_dir, prompts, settings)  # seeded: the same baseline on every invocation
            if str(seed) not in results.get("_start", {}):
                results.setdefault("_start", {})[str(seed)] = {"model": start_dir, "build_s": round(build_s, 1),
                                                                "steerability": E.steerability(start_dir, prompts, settings)}
        for method in [m for m in methods if m in METHODS]:
            if str(seed) in results.get(method, {}) and not args.rerun:
                print(f"seed {seed}: {method} already in {results_path}; skipping (--rerun to redo)", flush=True)
                continue
            print(f"[{time.time() - started:7.0f}s] seed {seed}: {method}", flush=True)
            rounds = [_row(0, base, base)]
            if METHODS[method] is not None:
                with _locked(args.lock):
                    run_dir = out / "runs" / method / f"seed{seed}"
                    shutil.rmtree(run_dir, ignore_errors=True)  # redone from scratch: `selfsteer run` refuses a used output_dir
                    run_s = _run(args.config, [*common, *METHODS[method], f"output_dir={run_dir}", "tensorboard=false"])
                    ckpts = RunDir(run_dir).numbered()
                    for r, ckpt in ckpts:
                        if r % args.eval_every and ckpt != ckpts[-1][1]:
                            continue
                        row = _row(r, E.evaluate(str(ckpt), prompts, settings, baseline=base["scores"]), base)
                        row.update(pair_signal(RunDir(run_dir).round(r) / "triples.jsonl"))
                        rounds.append(row)
                rounds[-1]["run_s"] = round(run_s, 1)
            entry = {"rounds": rounds, "final": rounds[-1]}
            if METHODS[method] is not None and (run_dir / "checkpoints_b").is_dir():  # SIPO's second policy
                rows_b = [_row(0, base, base)] + [
                    _row(r, E.evaluate(str(c), prompts, settings, baseline=base["scores"]), base)
                    for r, c in RunDir(run_dir).numbered("checkpoints_b")]
                results.setdefault(f"{method}_policy_b", {})[str(seed)] = {"rounds": rows_b, "final": rows_b[-1]}
            if METHODS[method] is not None:  # every round's own pairs, gold-scored (cheap: no generation)
                own = _own_metrics(run_dir / "metrics.jsonl")
                entry["pairs"] = [{"round": r, **pair_signal(d / "triples.jsonl"), **own.get(r, {})}
                                  for r, d in RunDir(run_dir).numbered("rounds")]
            results.setdefault(method, {})[str(seed)] = entry
            results_path.write_text(json.dumps(results, indent=2))  # after every run: nothing finished is lost
    if "_start" not in results:
        ap.error(f"{results_path} holds no results yet")
    md = table(results, methods)
    steer_md = _steer_table(results["_start"])
    (out / "alignment.md").write_text(f"# Alignment benchmark\n\n{_header(args, sorted(results['_start']))}\n\n{md}\n\n## Start model steerability\n\n"
                                      f"{steer_md}\n")
    plot(results, methods, out / "alignment.png")
    print(md)
    print(steer_md)
    final = [r["final"]["sampled_win_rate"] for r in results.get("online_sso_v1", {}).values()]
    if final:
        print(f"online SSO v1 sampled win rate vs start ratio: {statistics.mean(final) / 0.5:.3f}")
    return 0


@contextlib.contextmanager
def _locked(path):
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _row(r: int, ev: dict, base: dict) -> dict:
    row = {"round": r}
    for mode in ("greedy", "sampled"):
        s = ev[mode]
        row.update({f"{mode}_gold": s["gold"], f"{mode}_win_rate": s.get("win_rate", 0.5), f"{mode}_length": s["length"]})
        row.update({f"{mode}_{d}": s[d] for d in base[mode] if d[:1].isupper()})
    return row


def _own_metrics(path: Path) -> dict[int, dict]:
    """Per round, the run's own gold-free view: the signal alert and the diagnostics that track."""
    keys = ("signal/alert", "signal/pair_identical", "signal/rejected_bare_minus_pos", "train/rewards_neg/chosen",
            "data/trained_pairs", "data/replayed", "pairs/filter_kept")
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {row["round"]: {k: row[k] for k in keys if k in row} for row in rows}


def _run(config: str, overrides: list[str]) -> float:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "selfsteer.cli.main", "run", config, *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"selfsteer run {' '.join(overrides)} failed:\n{proc.stderr[-4000:]}")
    return time.time() - t0


def _header(args, seeds) -> str:
    import platform

    return (f"Seeds {', '.join(seeds)}; config `{Path(args.config).name}` {' '.join(args.set)}; held-out prompts "
            f"{args.eval_prompts}, {args.samples} samples each at T=1. Machine: {platform.machine()}, "
            f"{os.cpu_count()} CPU cores; {time.strftime('%Y-%m-%d')}.")


def _steer_table(start: dict) -> str:
    """Per rule, mean over seeds: how often the start model meets it with no / its good / its bad principle."""
    seeds = [info["steerability"] for info in start.values()]
    dims = [d for d in seeds[0] if d != "none"]
    mean = lambda get: statistics.mean(get(s) for s in seeds)  # noqa: E731
    lines = ["| rule | met, no principle | met, good principle | met, bad principle | gold, good principle "
             "| gold, bad principle |", "|---|---|---|---|---|---|"]
    for d in dims:
        cells = [mean(lambda s: s[d][k]) for k in ("none", "good", "bad", "good_gold", "bad_gold")]
        lines.append(f"| {d} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    lines.append(f"| (all rules) gold, no principle | {mean(lambda s: s['none']['gold']):.3f} | | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

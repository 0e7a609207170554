"""Signal-health remedies compared on the alignment benchmark (issue: keep the online signal alive).

Reads the results of `benchmarks/alignment.py` runs of online SSO v1 and its remedies (one
results directory per start model), and writes a table and plots of gold pair accuracy through
the last round and held-out win rate vs the start model:

    python benchmarks/alignment.py --methods online_sso_v1,v1_filter,filter_refresh,drop_similar,replay,ref_refresh \\
        --rounds 30 --eval-every 5 --out results/remedies/default
    python benchmarks/alignment.py --methods ... --set task.steerability=0.6 --out results/remedies/weak
    python benchmarks/remedies.py results/remedies/default results/remedies/weak

Pair accuracy is pooled over seeds and weighted by pair count (a filter trains on few pairs, so
an unweighted mean of per-seed rates would overstate rounds with one or two pairs), then averaged
over a 5-round window; "holds >= 0.65" means every window through the last round does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ["online_sso_v1", "v1_filter", "filter_refresh", "drop_similar", "replay", "ref_refresh"]
WINDOW, TARGET = 5, 0.65
NOTES = f"""Gold pair accuracy: pooled over seeds, weighted by pair count, mean over {WINDOW}-round windows
("trained" = the pairs the trainer saw; "all sampled" = every pair the round sampled, filtered or
not). A round whose pairs were all dropped trains nothing; runs made before the driver saved such
rounds have no checkpoint for them, so their "last round" win rate is that of their last
checkpoint (the policy did not change after it). Alert round: the default `signal.*` alert."""


def pooled(seeds: list[dict], acc: str, count: str) -> dict[int, tuple[float, int]]:
    """Round -> (pair-weighted gold accuracy over seeds, pairs), from each run's `pairs` rows."""
    hits: dict[int, list[float]] = {}
    for s in seeds:
        for row in s.get("pairs", []):
            n = row.get(count, 0) if count else row.get("trained_pairs", 0)
            if row.get(acc) == row.get(acc) and n:  # skip NaN (no pairs that round)
                h = hits.setdefault(row["round"], [0.0, 0])
                h[0] += row[acc] * n
                h[1] += n
    return {r: (h[0] / h[1], h[1]) for r, h in sorted(hits.items())}


def windows(curve: dict[int, tuple[float, int]]) -> list[tuple[int, float]]:
    """(last round of window, pair-weighted accuracy) over consecutive WINDOW-round windows."""
    rounds = sorted(curve)
    out = []
    for i in range(0, len(rounds) - WINDOW + 1):
        chunk = [curve[r] for r in rounds[i:i + WINDOW]]
        total = sum(n for _, n in chunk)
        out.append((rounds[i + WINDOW - 1], sum(a * n for a, n in chunk) / total))
    return out


def _stat(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "–"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def summary(results: dict, method: str) -> dict:
    seeds = list(results.get(method, {}).values())
    trained = pooled(seeds, "trained_pair_accuracy", "trained_pairs")
    sampled = pooled(seeds, "pair_accuracy", "")
    win = windows(trained)
    alerts = []
    for s in seeds:
        fired = [row["round"] for row in s.get("pairs", []) if row.get("signal/alert") == 1.0]
        alerts.append(str(fired[0]) if fired else "–")
    last = max(trained) if trained else 0
    return {
        "seeds": len(seeds), "rounds": last,
        "trained_first": windows(trained)[0][1] if win else float("nan"),
        "trained_last": win[-1][1] if win else float("nan"),
        "trained_min_window": min(a for _, a in win) if win else float("nan"),
        "holds": bool(win) and all(a >= TARGET for _, a in win),
        "sampled_last": windows(sampled)[-1][1] if windows(sampled) else float("nan"),
        "sampled_min_window": min((a for _, a in windows(sampled)), default=float("nan")),
        "pairs_per_round": statistics.mean(n for _, n in trained.values()) / max(len(seeds), 1) if trained else 0.0,
        "win_final": [s["final"]["sampled_win_rate"] for s in seeds],
        "gold_final": [s["final"]["sampled_gold"] for s in seeds],
        "win_peak": [max(s["rounds"], key=lambda r: r["sampled_win_rate"])["sampled_win_rate"] for s in seeds],
        "alerts": "/".join(alerts),
        "curves": (trained, sampled),
    }


def table(name: str, results: dict) -> str:
    head = ["method", "seeds", "trained-pair gold acc., rounds 1-5", f"last {WINDOW} rounds", f"worst {WINDOW}-round window",
            f">= {TARGET} throughout", f"all sampled pairs, last {WINDOW}", "all sampled, worst window", "trained pairs / round",
            "sampled win rate vs start (last round)", "peak win rate", "sampled gold (last)", "alert round (per seed)"]
    lines = [f"### {name}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for m in METHODS:
        if m not in results:
            continue
        s = summary(results, m)
        lines.append("| " + " | ".join([
            m, str(s["seeds"]), f"{s['trained_first']:.3f}", f"{s['trained_last']:.3f}", f"{s['trained_min_window']:.3f}",
            "yes" if s["holds"] else "no", f"{s['sampled_last']:.3f}", f"{s['sampled_min_window']:.3f}",
            f"{s['pairs_per_round']:.1f}",
            _stat(s["win_final"]), _stat(s["win_peak"]), _stat(s["gold_final"]), s["alerts"]]) + " |")
    return "\n".join(lines)


def plot(runs: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 3, figsize=(16, 4.2 * len(runs)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for row, (name, results) in enumerate(runs.items()):
        for i, m in enumerate(METHODS):
            if m not in results:
                continue
            s = summary(results, m)
            for ax, curve in zip(axes[row][:2], s["curves"]):
                w = windows(curve)
                ax.plot([r for r, _ in w], [a for _, a in w], color=colors(i), label=m)
            evals: dict[int, list[float]] = {}
            for seed in results[m].values():
                for r in seed["rounds"]:
                    evals.setdefault(r["round"], []).append(r["sampled_win_rate"])
            xs = sorted(evals)
            axes[row][2].plot(xs, [statistics.mean(evals[x]) for x in xs], "-o", ms=3, color=colors(i), label=m)
        titles = [f"{name}: gold accuracy of trained pairs ({WINDOW}-round window)",
                  f"{name}: gold accuracy of all sampled pairs", f"{name}: held-out win rate vs start (sampled)"]
        for ax, title in zip(axes[row], titles):
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
            ax.set_xlabel("round")
            ax.axhline(TARGET if "accuracy" in title else 0.5, color="grey", lw=0.8, ls="--")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="results directories of benchmarks/alignment.py (one per start model)")
    ap.add_argument("--out", default=str(REPO / "results" / "remedies"))
    args = ap.parse_args(argv)
    runs = {}
    for d in args.dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            ap.error(f"{path} not found: run benchmarks/alignment.py --out {d} first")
        runs[Path(d).name] = json.loads(path.read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = "\n\n".join(table(name, results) for name, results in runs.items())
    (out / "remedies.md").write_text(f"# Signal-health remedies\n\n{NOTES}\n\n{md}\n")
    plot(runs, out / "remedies.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

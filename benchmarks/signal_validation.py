"""Do the gold-free signal diagnostics track the gold truth of a round's own pairs?

Every online run logs, per round, diagnostics computed without any gold reward (`signal/*`: pair
identity and similarity, steering gaps from the policy's own log-probs; `train/rewards*`: reward
margins and accuracies per pair type; `rollout/*_tokens`: length drift). On the alignment task we
also know the gold truth of the same pairs (pair accuracy, good- and bad-principle adherence).
This script correlates the two over every (run, round) of an alignment benchmark output.

    python benchmarks/signal_validation.py --runs results/alignment/runs --out results/signal

Writes <out>/validation.json, <out>/validation.md and <out>/validation.png. A diagnostic "tracks"
when its Spearman correlation with gold pair accuracy is at least 0.5 in magnitude; the others are
flagged in the table (kept in the logs, not to be trusted alone).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfsteer.benchmark.report import pair_signal  # noqa: E402
from selfsteer.utils.run_dir import RunDir  # noqa: E402

GOLD = ("pair_accuracy", "good_adherence", "bad_adherence")
PREFIXES = ("signal/", "train/rewards", "rollout/chosen_tokens", "rollout/rejected_tokens", "rollout/raw_tokens")
TRACKS = 0.5
WATCHER = "signal/alert"  # the alert's own outputs, not diagnostics


def collect(runs: Path) -> list[dict]:
    """One point per (method, seed, round): its gold-free metrics and the gold truth of its pairs."""
    points = []
    for metrics_file in sorted(runs.glob("*/seed*/metrics.jsonl")):
        run_dir = metrics_file.parent
        for line in metrics_file.read_text().splitlines():
            row = json.loads(line)
            r = int(row["round"])
            gold = pair_signal(RunDir(run_dir).round(r) / "triples.jsonl")
            diag = {k: float(v) for k, v in row.items() if k.startswith(PREFIXES) and isinstance(v, (int, float))}
            points.append({"method": run_dir.parent.name, "seed": run_dir.name, "round": r, **gold, **diag})
    return points


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks with ties sharing their average rank (as Spearman's rho needs)."""
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=float)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def _within_runs(values: np.ndarray, runs: list[tuple]) -> np.ndarray:
    """Each run's mean removed, so a shared trend over rounds or a per-method offset cannot make a match."""
    out = values.copy()
    for run in set(runs):
        idx = np.array([r == run for r in runs])
        if not np.isnan(values[idx]).all():  # a metric this run's algorithm does not log stays NaN
            out[idx] = values[idx] - np.nanmean(values[idx])
    return out


def correlations(points: list[dict]) -> dict[str, dict[str, float]]:
    keys = sorted({k for p in points for k in p if k.startswith(PREFIXES) and not k.startswith(WATCHER)})
    runs = [(p["method"], p["seed"]) for p in points]
    gold = {g: np.array([p[g] for p in points], dtype=float) for g in GOLD}
    out = {}
    for key in keys:
        x = np.array([p.get(key, np.nan) for p in points], dtype=float)
        out[key] = {g: spearman(x, gold[g]) for g in GOLD}
        out[key]["pair_accuracy_within_runs"] = spearman(_within_runs(x, runs), _within_runs(gold["pair_accuracy"], runs))
        out[key]["n"] = int((~np.isnan(x)).sum())
    return out


def markdown(corr: dict, n_points: int) -> str:
    lines = [f"Spearman correlation over {n_points} (run, round) points; **tracks** = |ρ| ≥ {TRACKS} with gold "
             "pair accuracy both pooled and within runs (each run's mean removed).", "",
             "| diagnostic | ρ pair accuracy | ρ within runs | ρ good adherence | ρ bad adherence | n | verdict |",
             "|---|---|---|---|---|---|---|"]
    ranked = sorted(corr.items(), key=lambda kv: -abs(np.nan_to_num(kv[1]["pair_accuracy"])))
    for key, c in ranked:
        verdict = "tracks" if _tracks(c) else "flag: does not track"
        lines.append(f"| `{key}` | {c['pair_accuracy']:+.2f} | {c['pair_accuracy_within_runs']:+.2f} "
                     f"| {c['good_adherence']:+.2f} | {c['bad_adherence']:+.2f} | {c['n']} | {verdict} |")
    return "\n".join(lines)


def _tracks(c: dict) -> bool:
    """Strong both pooled and within runs, in the same direction."""
    pooled, within = np.nan_to_num(c["pair_accuracy"]), np.nan_to_num(c["pair_accuracy_within_runs"])
    return abs(pooled) >= TRACKS and abs(within) >= TRACKS and pooled * within > 0


def plot(points: list[dict], corr: dict, path: Path, top: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = sorted(corr, key=lambda k: -abs(np.nan_to_num(corr[k]["pair_accuracy"])))[:top]
    methods = sorted({p["method"] for p in points})
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(best), figsize=(4 * len(best), 4), squeeze=False)
    for ax, key in zip(axes[0], best):
        for i, m in enumerate(methods):
            pts = [p for p in points if p["method"] == m and key in p]
            ax.scatter([p[key] for p in pts], [p["pair_accuracy"] for p in pts], s=10, color=colors(i), label=m,
                       alpha=0.7)
        ax.set_xlabel(key)
        ax.set_title(f"ρ = {corr[key]['pair_accuracy']:+.2f}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("gold pair accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(REPO / "results" / "alignment" / "runs"))
    ap.add_argument("--out", default=str(REPO / "results" / "signal"))
    args = ap.parse_args(argv)
    points = collect(Path(args.runs))
    if not points:
        ap.error(f"no <method>/seed*/metrics.jsonl under {args.runs}; run benchmarks/alignment.py first")
    corr = correlations(points)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").write_text(json.dumps({"points": points, "spearman": corr}, indent=1))
    md = markdown(corr, len(points))
    (out / "validation.md").write_text("# Gold-free diagnostics vs gold pair truth\n\n" + md + "\n")
    plot(points, corr, out / "validation.png")
    print(md)
    tracking = sum(_tracks(c) for c in corr.values())
    print(f"diagnostics tracking gold pair accuracy ratio: {tracking / len(corr):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

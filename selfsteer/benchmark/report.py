"""Tables, plots and gold pair signal for the alignment benchmark (`benchmarks/alignment.py`)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from selfsteer.toy import task as T


def pair_signal(triples_path: Path) -> dict[str, float]:
    """Gold view of a round's own pairs: are y+ really better than y-, and were the principles obeyed?

    pair_accuracy = P(gold(y+) > gold(y-)) over the round's pairs, trained_pair_accuracy over those
    the trainer saw (pairs.filter may drop some); good/bad adherence = share of the named rules y+ meets
    and y- breaks; identical_rate counts the pairs the SSO round dropped as identical.
    """
    path = Path(triples_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    dropped_file = path.parent / "dropped.json"
    identical = json.loads(dropped_file.read_text()).get("identical_pair", 0) if dropped_file.is_file() else 0
    acc, trained, good, bad = [], [], [], []
    for row in rows:
        prompt = T.prompts_by_text().get(row["instruction"])
        if prompt is None:
            continue
        chosen, rejected = T.gold_scores(prompt, row["chosen"]), T.gold_scores(prompt, row["rejected"])
        acc.append(float(chosen["gold"] > rejected["gold"]))
        if row.get("trained", True):  # pairs.filter's verdict; without a filter every pair is trained on
            trained.append(acc[-1])
        for dim in row.get("principles", {}).get("dimensions", []):
            if dim in chosen:
                good.append(chosen[dim])
                bad.append(1.0 - rejected[dim])
    total = len(rows) + identical
    return {"pair_accuracy": _mean(acc), "trained_pair_accuracy": _mean(trained), "trained_pairs": len(trained),
            "good_adherence": _mean(good), "bad_adherence": _mean(bad),
            "identical_rate": identical / total if total else float("nan")}


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _stat(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(results: dict, methods: list[str]) -> str:
    """Markdown: final-round figures, mean ± std over seeds, plus each method's peak sampled win rate."""
    head = ["method", "seeds", "sampled gold", "sampled win rate", "greedy gold", "greedy win rate", "length",
            "peak sampled win (round)", *(f"{d}" for d in T.DIMENSIONS), "pair acc. (last)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for m in methods:
        seeds = results.get(m, {})
        if not seeds:
            continue
        finals = [s["final"] for s in seeds.values()]
        peaks = [max(s["rounds"], key=lambda r: r["sampled_win_rate"]) for s in seeds.values()]
        peak = f"{statistics.mean(p['sampled_win_rate'] for p in peaks):.3f} ({'/'.join(str(p['round']) for p in peaks)})"
        cells = [m, str(len(finals)), *(_stat([f[k] for f in finals]) for k in
                                         ("sampled_gold", "sampled_win_rate", "greedy_gold", "greedy_win_rate")),
                 f"{statistics.mean(f['sampled_length'] for f in finals):.1f}", peak,
                 *(f"{statistics.mean(f[f'sampled_{d}'] for f in finals):.2f}" for d in T.DIMENSIONS),
                 _stat([f.get("pair_accuracy", float("nan")) for f in finals])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, methods: list[str], path: Path) -> Path:
    """Per round, per method (mean over seeds, band = ±1 std): gold, win rates, and the pairs' gold accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("sampled_gold", "held-out gold reward (sampled, T=1)"),
              ("sampled_win_rate", "win rate vs start (sampled)"),
              ("greedy_win_rate", "win rate vs start (greedy)"),
              ("pair_accuracy", "gold accuracy of the round's own pairs")]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    colors = plt.get_cmap("tab10")
    for i, m in enumerate(methods):
        seeds = list(results.get(m, {}).values())
        if not seeds:
            continue
        for ax, (key, title) in zip(axes.flat, panels):
            by_round: dict[int, list[float]] = {}
            for s in seeds:
                for row in s["rounds"]:
                    if key in row and row[key] == row[key]:
                        by_round.setdefault(row["round"], []).append(row[key])
            if not by_round:
                continue
            xs = sorted(by_round)
            if m == "start":  # one point at round 0: draw it across the plot as the reference line
                ax.axhline(statistics.mean(by_round[xs[0]]), color=colors(i), ls="--", lw=1, label=m)
                continue
            mean = [statistics.mean(by_round[x]) for x in xs]
            sd = [statistics.stdev(by_round[x]) if len(by_round[x]) > 1 else 0.0 for x in xs]
            ax.plot(xs, mean, "-", color=colors(i), label=m, marker="o", markersize=3)
            ax.fill_between(xs, [max(a - b, 0.0) for a, b in zip(mean, sd)], [min(a + b, 1.0) for a, b in zip(mean, sd)],
                            color=colors(i), alpha=0.12)
            ax.set_title(title)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("round")
    axes[0, 1].axhline(0.5, color="grey", lw=0.8)
    axes[1, 0].axhline(0.5, color="grey", lw=0.8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

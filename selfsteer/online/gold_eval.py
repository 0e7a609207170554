"""Gold evaluation inside a run (`eval.every`): is the run aligning the model, round by round?

The rollout engines answer the alignment task's held-out prompts with the weights they hold after
a round's sync (so it works for any engine backend and layout, and costs no extra model copy), and
the task's program scores the answers. The start weights are scored before round 1; their
per-answer scores, kept in `eval/start_scores.json`, are the baseline of every later win rate,
also after `--resume`. `eval/gold.jsonl` holds one line per scored round (0 = start), `eval/gold.png`
plots it, and the driver logs a before/after summary at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from selfsteer.benchmark import evaluation as E
from selfsteer.toy import task as T
from selfsteer.engines.base import ChatRequest
from selfsteer.training.steps import state_due
from selfsteer.utils.io import write_json, write_jsonl

logger = logging.getLogger(__name__)

MODES = ("greedy", "sampled")


class EngineResponder:
    """`Evaluator.responses` answered by the run's rollout pool instead of a model loaded here."""

    def __init__(self, pool):
        self.pool = pool

    def responses(self, prompts: list[T.TaskPrompt], system: Optional[str], sampling, n: int = 1) -> list[list[str]]:
        requests = [ChatRequest(prompt=p.text, system=system) for p in prompts for _ in range(n)]
        return E.by_prompt([g.text for g in self.pool.generate(requests, sampling)], n)


class GoldEval:
    """Scores the engines' weights at round 0 and every `eval.every`-th round (and the last)."""

    def __init__(self, cfg, run_dir: Path, last_finished: int = 0):
        e = cfg.eval
        self.every, self.rounds = e.every, cfg.rounds
        self.settings = e  # the benchmark's EvalSettings is this EvalConfig
        _, heldout = T.split_prompts(cfg.task.split_seed)
        self.prompts = T.balanced(heldout, e.prompts, seed=cfg.task.split_seed)  # the benchmark's held-out set
        self.dir = Path(run_dir) / "eval"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path, self.start_path = self.dir / "gold.jsonl", self.dir / "start_scores.json"
        self.rows = [r for r in _read_rows(self.log_path) if r["round"] <= last_finished]  # resume re-does the rest
        _write_rows(self.log_path, self.rows)
        self.start_scores = json.loads(self.start_path.read_text()) if self.start_path.is_file() else None
        self.resumed = last_finished > 0

    def due(self, round_index: int) -> bool:
        return bool(self.every) and state_due(round_index, self.every, self.rounds)

    def start(self, pool) -> dict[str, float]:
        """Round 0: the start weights (not on a resume: the engines hold the resumed weights then)."""
        if self.start_scores is not None or self.resumed:
            return {}
        result = E.evaluate(None, self.prompts, self.settings, evaluator=EngineResponder(pool))
        self.start_scores = result["scores"]
        write_json(self.start_path, self.start_scores, indent=None)
        return self._record(0, result)

    def after_round(self, round_index: int, pool) -> dict[str, float]:
        if not self.due(round_index):
            return {}
        if self.start_scores is None:  # eval turned on for a resumed run: no baseline to compare with
            logger.warning("eval: no start-model scores in %s; win rates are left out", self.start_path)
        result = E.evaluate(None, self.prompts, self.settings, baseline=self.start_scores,
                            evaluator=EngineResponder(pool))
        return self._record(round_index, result)

    def _record(self, round_index: int, result: dict) -> dict[str, float]:
        metrics = flat_metrics(result)
        row = {"round": round_index, **metrics, "examples": result["greedy"]["examples"]}
        self.rows = [r for r in self.rows if r["round"] != round_index] + [row]
        _write_rows(self.log_path, self.rows)
        logger.info("eval round %d: held-out gold %.3f greedy, %.3f sampled%s", round_index, metrics["eval/gold_greedy"],
                    metrics["eval/gold_sampled"], f"; win rate vs start {metrics['eval/win_rate_sampled']:.3f}"
                    if "eval/win_rate_sampled" in metrics else "")
        return metrics

    def finish(self) -> Optional[str]:
        """The summary table (also logged) and `eval/gold.png`; None if nothing was scored."""
        if not self.rows:
            return None
        plot(self.rows, self.dir / "gold.png")
        text = summary(self.rows, len(self.prompts), self.settings)
        logger.info("%s\nplot: %s", text, self.dir / "gold.png")
        return text


def flat_metrics(result: dict) -> dict[str, float]:
    """`evaluate`'s result as `eval/...` metrics (TensorBoard, metrics.jsonl)."""
    out = {}
    for mode in MODES:
        s = result[mode]
        out[f"eval/gold_{mode}"] = s["gold"]
        if "win_rate" in s:
            out[f"eval/win_rate_{mode}"] = s["win_rate"]
        out[f"eval/length_{mode}"] = s["length"]
        for dim in T.DIMENSIONS:
            out[f"eval/{dim}_{mode}"] = s[dim]
    return out


def summary(rows: list[dict], num_prompts: int, settings: E.EvalSettings) -> str:
    """Gold per scored round, and the first held-out prompt answered at the start and at the end."""
    lines = [f"held-out gold reward ({num_prompts} task prompts, share of the 5 rules met; "
             f"greedy, and {settings.samples} samples at T={settings.temperature:g}):",
             f"{'round':>5}  {'gold greedy':>11}  {'gold sampled':>12}  {'win rate vs start':>17}  {'length':>6}"]
    for r in sorted(rows, key=lambda r: r["round"]):
        win = r.get("eval/win_rate_sampled")
        lines.append(f"{r['round']:>5}  {r['eval/gold_greedy']:>11.3f}  {r['eval/gold_sampled']:>12.3f}  "
                     f"{'-' if win is None else f'{win:.3f}':>17}  {r['eval/length_sampled']:>6.1f}")
    first, last = min(rows, key=lambda r: r["round"]), max(rows, key=lambda r: r["round"])
    if first is not last and first["examples"] and last["examples"]:
        lines.append(f"prompt:   {first['examples'][0]['prompt']}")
        lines.append(f"round {first['round']:>2}: {first['examples'][0]['response']}")
        lines.append(f"round {last['round']:>2}: {last['examples'][0]['response']}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["round"])
    xs = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("eval/gold_sampled", "gold, sampled"), ("eval/gold_greedy", "gold, greedy"),
                       ("eval/win_rate_sampled", "win rate vs start, sampled")):
        if all(key in r for r in rows):
            ax.plot(xs, [r[key] for r in rows], marker="o", label=label)
    ax.set(xlabel="round (0 = start)", ylabel="held-out score", ylim=(0, 1), title="gold reward per round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_rows(path: Path, rows: list[dict]) -> None:
    write_jsonl(path, sorted(rows, key=lambda r: r["round"]))

"""`selfsteer eval` and `selfsteer export`: judge a checkpoint of any model the paper's way.

`eval` answers a prompts file with a checkpoint (greedy, plus `samples` sampled answers per prompt)
on the HF backend with the rollouts' chat formatting, scores them with a gold scorer when the
prompts belong to a task that has one (today: the alignment task, `selfsteer.toy.task`, imported
only then), and compares against a baseline checkpoint (win rate on the gold score). Rows go to
JSONL. `export` turns an eval file, or a run's last round of bare-prompt responses (y^o), into
AlpacaEval's input: a JSON list of {instruction, output, generator}.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

logger = logging.getLogger(__name__)

Scorer = Callable[[str, str], float]  # (prompt text, response) -> gold reward


def resolve_checkpoint(path: str | Path) -> Path:
    """A model directory as given (or a LoRA adapter checkpoint, loaded merged into its base), or a run
    directory's last saved checkpoint (checkpoints/round_NNNN)."""
    path = Path(path)

    def is_model(p: Path) -> bool:
        return (p / "config.json").is_file() or (p / "adapter_config.json").is_file()

    if is_model(path):
        return path
    rounds = sorted(p for p in (path / "checkpoints").glob("round_*") if is_model(p))
    if rounds:
        return rounds[-1]
    raise FileNotFoundError(f"{path}: neither an HF model directory (config.json), an adapter checkpoint "
                            f"(adapter_config.json) nor a run directory with "
                            f"checkpoints/round_NNNN")


def generator_name(model_dir: str | Path) -> str:
    """A readable name: the model directory, or "<run>-round_NNNN" for a run's checkpoint."""
    path = Path(model_dir)
    return f"{path.parent.parent.name}-{path.name}" if path.parent.name == "checkpoints" else path.name


def task_scorer(prompts: list[str], which: str) -> Optional[Scorer]:
    """The alignment task's gold reward when `which` is "task", or "auto" and every prompt is one of its
    prompts; None for "none" or an auto miss.

    Raises:
        ValueError: `which` is "task" but a prompt is not a task prompt (names its row).
    """
    if which == "none":
        return None
    from selfsteer.benchmark import task as T  # lazy: the benchmark package only when its prompts are used

    known = T.prompts_by_text()
    missing = next((i for i, p in enumerate(prompts) if p not in known), None)
    if missing is not None:
        if which == "task":
            raise ValueError(f"--scorer task: prompt row {missing} ({prompts[missing][:60]!r}) is not one of the "
                             f"alignment task's prompts; use --scorer none")
        return None
    return lambda prompt, response: T.gold_scores(known[prompt], response)["gold"]


def _generate(model_dir: Path, prompts: list[str], samples: int, max_new_tokens: int, temperature: float,
              top_p: float, seed: int) -> tuple[list[str], list[list[str]]]:
    from selfsteer.data.chat import encode_chat
    from selfsteer.engines.base import Sampling
    from selfsteer.engines.hf_engine import HFBackend

    engine = HFBackend(str(model_dir), max_batch_size=16)
    ids = [encode_chat(engine.tokenizer, p) for p in prompts]
    greedy = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)
    texts = [g.text.strip() for g in engine.generate(ids, [greedy] * len(ids))]
    sampled: list[list[str]] = [[] for _ in prompts]
    if samples:
        s = Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        gens = engine.generate([x for x in ids for _ in range(samples)], [s] * (len(ids) * samples))
        sampled = [[g.text.strip() for g in gens[i * samples:(i + 1) * samples]] for i in range(len(prompts))]
    return texts, sampled


def _win(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def run_eval(model: str, prompts_file: str, *, baseline: Optional[str] = None, samples: int = 1,
             max_new_tokens: int = 128, temperature: float = 0.7, top_p: float = 0.8, scorer: str = "auto",
             seed: int = 0, out: Optional[str] = None) -> dict:
    """Generate, score and compare; write one JSONL row per prompt to `out`; return the summary.

    A row: uuid, prompt, model, greedy, samples, and where a scorer exists gold_greedy and
    gold_samples; with a baseline also baseline_greedy/baseline_samples (and their golds and the
    per-prompt wins). The summary is also written beside `out` as <out>.summary.json.
    """
    from selfsteer.data.prompts import load_prompts

    if samples < 0:
        raise ValueError(f"--samples {samples} must be >= 0")
    model_dir = resolve_checkpoint(model)
    base_dir = resolve_checkpoint(baseline) if baseline else None
    records = load_prompts(prompts_file)
    texts = [r.prompt for r in records]
    gold = task_scorer(texts, scorer)
    greedy, sampled = _generate(model_dir, texts, samples, max_new_tokens, temperature, top_p, seed)
    rows = [{"uuid": r.uid, "prompt": r.prompt, "model": str(model_dir), "greedy": g, "samples": s}
            for r, g, s in zip(records, greedy, sampled)]
    if base_dir is not None:
        b_greedy, b_sampled = _generate(base_dir, texts, samples, max_new_tokens, temperature, top_p, seed)
        for row, g, s in zip(rows, b_greedy, b_sampled):
            row.update(baseline=str(base_dir), baseline_greedy=g, baseline_samples=s)
    summary: dict = {"model": str(model_dir), "prompts": len(rows), "samples": samples,
                     "scorer": "task" if gold else "none"}
    if base_dir is not None:
        summary["baseline"] = str(base_dir)
    if gold is not None:
        for row in rows:
            row["gold_greedy"] = gold(row["prompt"], row["greedy"])
            row["gold_samples"] = [gold(row["prompt"], s) for s in row["samples"]]
            if base_dir is not None:
                row["baseline_gold_greedy"] = gold(row["prompt"], row["baseline_greedy"])
                row["baseline_gold_samples"] = [gold(row["prompt"], s) for s in row["baseline_samples"]]
                row["win_greedy"] = _win(row["gold_greedy"], row["baseline_gold_greedy"])
                row["win_samples"] = [_win(a, b) for a, b in zip(row["gold_samples"], row["baseline_gold_samples"])]
        summary.update(_means(rows, base_dir is not None))
    if out:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        summary["out"] = str(out_path)
        out_path.with_name(out_path.name + ".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _means(rows: list[dict], with_baseline: bool) -> dict[str, float]:
    def mean(xs):
        return round(sum(xs) / len(xs), 4) if xs else float("nan")

    out = {"gold_greedy": mean([r["gold_greedy"] for r in rows]),
           "gold_sampled": mean([g for r in rows for g in r["gold_samples"]])}
    if with_baseline:
        out["baseline_gold_greedy"] = mean([r["baseline_gold_greedy"] for r in rows])
        out["win_rate_greedy"] = mean([r["win_greedy"] for r in rows])
        out["win_rate_sampled"] = mean([w for r in rows for w in r["win_samples"]])
    return out


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {n} is not JSON: {exc}") from None
    return rows


def export_alpaca_eval(source: str, out: str, *, generator: Optional[str] = None, which: str = "greedy") -> Path:
    """Write AlpacaEval's model-outputs file: a JSON list of {instruction, output, generator}.

    `source`: an eval JSONL (`which` picks the greedy answer or the first sample), or a run
    directory (its last round's bare-prompt responses y^o, from rounds/round_NNNN/triples.jsonl).
    """
    src = Path(source)
    if src.is_dir():
        rounds = sorted((src / "rounds").glob("round_*/triples.jsonl"))
        if not rounds:
            raise FileNotFoundError(f"{src}: a run directory needs rounds/round_NNNN/triples.jsonl")
        rows = _read_jsonl(rounds[-1])
        name = generator or src.name
        items = []
        for n, row in enumerate(rows, 1):
            if "instruction" not in row or "raw" not in row:
                raise ValueError(f"{rounds[-1]}: line {n} lacks 'instruction' or 'raw'")
            items.append({"instruction": row["instruction"], "output": row["raw"], "generator": name})
    elif src.is_file():
        rows = _read_jsonl(src)
        items = []
        for n, row in enumerate(rows, 1):
            field = "greedy" if which == "greedy" else "samples"
            if "prompt" not in row or field not in row:
                raise ValueError(f"{src}: line {n} lacks 'prompt' or {field!r}; is it a `selfsteer eval --out` file?")
            if which == "sample" and not row["samples"]:
                raise ValueError(f"{src}: line {n} has no samples; run selfsteer eval with --samples >= 1")
            output = row["greedy"] if which == "greedy" else row["samples"][0]
            items.append({"instruction": row["prompt"], "output": output,
                          "generator": generator or generator_name(row.get("model", src.stem))})
    else:
        raise FileNotFoundError(f"{src}: no such eval file or run directory")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(items, ensure_ascii=False, indent=2), encoding="utf-8")
    return out_path

"""`selfsteer eval`: judge a checkpoint of any model on a prompts file, with a gold scorer where one exists.

`eval` answers a prompts file with a checkpoint (greedy, plus `samples` sampled answers per prompt)
on the HF backend with the rollouts' chat formatting, scores them, and compares against a baseline
checkpoint. Scorers: the IFEval/IFBench constraint checkers of the real-model benchmark, for rows
that carry `instruction_id_list` + `kwargs` (`benchmark.realbench.constraints`), or the alignment
task's gold reward (`selfsteer.toy.task`) when every prompt is one of its prompts. Every input is
checked before the first answer is generated: a damaged checkpoint or a bad row costs no generation.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

from selfsteer.benchmark.evaluation import win
from selfsteer.utils.io import write_json, write_jsonl
from selfsteer.utils.model_dir import ModelDirError, check_model_dir
from selfsteer.utils.run_dir import RunDir

logger = logging.getLogger(__name__)

SCORERS = ("auto", "none", "task", "ifeval", "ifbench")
PROMPT_FIELDS = ("prompt", "instruction")  # AlpacaEval's question file names the prompt "instruction"
ID_FIELDS = ("uuid", "key")  # IFEval and IFBench name their ids "key"
MODES = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")

Scorer = Callable[[str, str], float]  # (prompt text, response) -> gold reward


def resolve_checkpoint(path: str | Path) -> Path:
    """A model directory as given (or a LoRA adapter checkpoint, loaded merged into its base), or a run
    directory's final checkpoint (the highest checkpoints/round_NNNN), checked by `check_model_dir`: a
    damaged final checkpoint is named, never skipped for an earlier one."""
    path = Path(path)

    def is_adapter(p: Path) -> bool:
        return (p / "adapter_config.json").is_file() and not (p / "config.json").exists()

    def checked(p: Path) -> Path:
        return p if is_adapter(p) else check_model_dir(p)

    rounds = RunDir(path).numbered("checkpoints")
    if rounds and not ((path / "config.json").exists() or is_adapter(path)):
        return checked(rounds[-1][1])
    if (path / "config.json").exists() or is_adapter(path):
        return checked(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model or run directory")
    raise FileNotFoundError(f"{path}: neither an HF model directory (config.json), an adapter checkpoint "
                            f"(adapter_config.json) nor a run directory with "
                            f"checkpoints/round_NNNN")


def generator_name(model_dir: str | Path) -> str:
    """A readable name: the model directory, or "<run>-round_NNNN" for a run's checkpoint."""
    path = Path(model_dir)
    return f"{path.parent.parent.name}-{path.name}" if path.parent.name == "checkpoints" else path.name


def load_rows(prompts_file: str | Path):
    """(prompt records, constraint rows or None) from one read of the file.

    The prompt is "prompt", else AlpacaEval's "instruction"; the id "uuid", else IFEval's "key", else
    the row index. Constraint rows (uuid, prompt, instruction_id_list, kwargs) exist when the file
    has an instruction_id_list column.
    """
    from selfsteer.data.prompts import PromptDataError, read_prompt_table, records_from_table

    path = Path(prompts_file)
    table = read_prompt_table(path)
    cols = table.column_names
    prompt_field = next((f for f in PROMPT_FIELDS if f in cols), None)
    if prompt_field is None:
        raise PromptDataError(f"{path}: row 0: no prompt field: eval reads 'prompt' or AlpacaEval's 'instruction' "
                              f"(columns: {cols})")
    id_field = next((f for f in ID_FIELDS if f in cols), ID_FIELDS[0])
    records = records_from_table(table, path, prompt_field, id_field)
    if "instruction_id_list" not in cols:
        return records, None
    kwargs = table["kwargs"] if "kwargs" in cols else [None] * len(records)
    return records, [{"uuid": r.uid, "prompt": r.prompt, "instruction_id_list": ids, "kwargs": kw}
                     for r, ids, kw in zip(records, table["instruction_id_list"], kwargs)]


def task_scorer(prompts: list[str], which: str) -> Optional[Scorer]:
    """The alignment task's gold reward when `which` is "task", or "auto" and every prompt is one of its
    prompts; None for "none" or an auto miss.

    Raises:
        ValueError: `which` is "task" but a prompt is not a task prompt (names its row).
    """
    if which == "none":
        return None
    from selfsteer.toy import task as T  # lazy: the task only when its prompts are used

    known = T.prompts_by_text()
    missing = next((i for i, p in enumerate(prompts) if p not in known), None)
    if missing is not None:
        if which == "task":
            raise ValueError(f"--scorer task: prompt row {missing} ({prompts[missing][:60]!r}) is not one of the "
                             f"alignment task's prompts; use --scorer none")
        return None
    return lambda prompt, response: T.gold_scores(known[prompt], response)["gold"]


def constraint_scorer(which: str, rows: Optional[list[dict]], where: str):
    """The IFEval/IFBench scorer `which` names (or auto picks: every row carries instruction_id_list and
    one library knows every id), prepared and checked; None when the rows carry no constraints."""
    from selfsteer.benchmark.realbench import constraints as K

    if which in ("none", "task"):
        return None
    if rows is None:
        if which in K.KINDS:
            raise ValueError(f"--scorer {which}: {where} has no 'instruction_id_list' column (IFEval/IFBench rows: "
                             "prompt, instruction_id_list, kwargs)")
        return None
    kind = which if which in K.KINDS else K.pick_kind([r["instruction_id_list"] for r in rows])
    if kind is None:
        ids = sorted({i for r in rows for i in (r["instruction_id_list"] or [])})
        raise ValueError(f"{where}: the rows carry instruction_id_list, but not every row has one, or the ids "
                         f"{ids[:8]} are not all IFEval's or all IFBench's; give --scorer ifeval|ifbench to be "
                         "told which row is wrong")
    return K.prepare(kind, rows, where)


def _answers(model_dir: Path, prompts: list[str], samples: int, max_new_tokens: int, temperature: float,
             top_p: float, seed: int, who: str) -> tuple[list[str], list[list[str]], dict[str, float]]:
    from selfsteer.benchmark.realbench.evaluate import answers, local_engine
    from selfsteer.engines.base import Sampling

    try:
        engine = local_engine(model_dir, batch_size=16)
    except Exception as exc:  # noqa: BLE001 - check_model_dir passed; whatever transformers still refuses, one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelDirError(f"{model_dir}: the model does not load: {type(exc).__name__}: {first}") from None
    t0 = time.time()
    greedy = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)
    texts = [t.strip() for t in answers(engine, prompts, greedy, desc=f"{who} greedy")]
    seconds = {"greedy_s": round(time.time() - t0, 1)}
    sampled: list[list[str]] = [[] for _ in prompts]
    if samples:
        t0 = time.time()
        s = Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        gens = answers(engine, prompts, s, n=samples, desc=f"{who} sampled x{samples}")
        sampled = [[g.strip() for g in gens[i * samples:(i + 1) * samples]] for i in range(len(prompts))]
        seconds["sampled_s"] = round(time.time() - t0, 1)
    return texts, sampled, seconds


def run_eval(model: str, prompts_file: str, *, baseline: Optional[str] = None, samples: int = 0,
             max_new_tokens: int = 128, temperature: float = 0.7, top_p: float = 0.8, scorer: str = "auto",
             seed: int = 0, out: Optional[str] = None) -> dict:
    """Generate, score and compare; write one JSONL row per prompt to `out`; return the summary.

    A row: uuid, prompt, model, greedy, samples; with the task scorer gold_greedy and gold_samples;
    with a constraint scorer constraints_greedy / constraints_samples ({strict, loose} per
    instruction), or `unscored` (the ids that cannot run offline); with a baseline the same under
    baseline_* and the per-prompt wins. The summary is also written beside `out` as <out>.summary.json.
    """
    if samples < 0:
        raise ValueError(f"--samples {samples} must be >= 0")
    if scorer not in SCORERS:
        raise ValueError(f"--scorer {scorer!r}: valid {SCORERS}")
    model_dir = resolve_checkpoint(model)
    base_dir = resolve_checkpoint(baseline) if baseline else None
    records, constraint_rows = load_rows(prompts_file)
    texts = [r.prompt for r in records]
    constraints = constraint_scorer(scorer, constraint_rows, str(prompts_file))
    gold = None if constraints is not None else task_scorer(texts, scorer)  # ifeval/ifbench never get here
    if samples:
        logger.info("eval: %d prompt(s), greedy + %d sampled answer(s) each: about %dx the time of greedy answers "
                    "alone (--samples 0 for greedy only)", len(texts), samples, 1 + samples)
    summary: dict = {"model": str(model_dir), "prompts": len(records), "samples": samples,
                     "scorer": constraints.kind if constraints else "task" if gold else "none"}
    greedy, sampled, seconds = _answers(model_dir, texts, samples, max_new_tokens, temperature, top_p, seed, "model")
    summary.update(seconds)
    rows = [{"uuid": r.uid, "prompt": r.prompt, "model": str(model_dir), "greedy": g, "samples": s}
            for r, g, s in zip(records, greedy, sampled)]
    if base_dir is not None:
        b_greedy, b_sampled, b_seconds = _answers(base_dir, texts, samples, max_new_tokens, temperature, top_p, seed,
                                                  "baseline")
        summary.update({f"baseline_{k}": v for k, v in b_seconds.items()})
        for row, g, s in zip(rows, b_greedy, b_sampled):
            row.update(baseline=str(base_dir), baseline_greedy=g, baseline_samples=s)
        summary["baseline"] = str(base_dir)
    if gold is not None:
        _score_task(rows, gold, base_dir is not None)
        summary.update(_task_means(rows, base_dir is not None))
    elif constraints is not None:
        summary.update(_score_constraints(rows, constraint_rows, constraints, base_dir is not None))
    if out:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(out_path, rows)
        summary["out"] = str(out_path)
        write_json(out_path.with_name(out_path.name + ".summary.json"), summary)
    return summary


def _mean(xs) -> float:
    xs = list(xs)
    return round(sum(xs) / len(xs), 4) if xs else float("nan")


def _score_task(rows: list[dict], gold: Scorer, with_baseline: bool) -> None:
    for row in rows:
        row["gold_greedy"] = gold(row["prompt"], row["greedy"])
        row["gold_samples"] = [gold(row["prompt"], s) for s in row["samples"]]
        if with_baseline:
            row["baseline_gold_greedy"] = gold(row["prompt"], row["baseline_greedy"])
            row["baseline_gold_samples"] = [gold(row["prompt"], s) for s in row["baseline_samples"]]
            row["win_greedy"] = win(row["gold_greedy"], row["baseline_gold_greedy"])
            row["win_samples"] = [win(a, b) for a, b in zip(row["gold_samples"], row["baseline_gold_samples"])]


def _task_means(rows: list[dict], with_baseline: bool) -> dict[str, float]:
    out = {"gold_greedy": _mean(r["gold_greedy"] for r in rows),
           "gold_sampled": _mean(g for r in rows for g in r["gold_samples"])}
    if with_baseline:
        out["baseline_gold_greedy"] = _mean(r["baseline_gold_greedy"] for r in rows)
        out["win_rate_greedy"] = _mean(r["win_greedy"] for r in rows)
        out["win_rate_sampled"] = _mean(w for r in rows for w in r["win_samples"])
    return out


def _score_constraints(rows: list[dict], constraint_rows: list[dict], scorer, with_baseline: bool) -> dict:
    """Per-row strict/loose results and the four accuracies of each answer set; wins compare the share
    of a prompt's instructions followed (strict) against the baseline's."""
    from selfsteer.benchmark.realbench.constraints import accuracy

    sets: dict[str, list] = {"": [], "sampled_": [], "baseline_": [], "baseline_sampled_": []}
    wins: list[float] = []
    for row, crow in zip(rows, constraint_rows):
        if row["uuid"] in scorer.unscored:
            row["unscored"] = scorer.unscored[row["uuid"]]
            continue
        for prefix in ("", "baseline_") if with_baseline else ("",):
            f = scorer.follow(crow, row[f"{prefix}greedy"])
            fs = [scorer.follow(crow, s) for s in row[f"{prefix}samples"]]
            row[f"{prefix}constraints_greedy"] = {"strict": list(f.strict), "loose": list(f.loose)}
            row[f"{prefix}constraints_samples"] = [{"strict": list(x.strict), "loose": list(x.loose)} for x in fs]
            sets[prefix].append(f)
            sets[f"{prefix}sampled_"] += fs
        if with_baseline:
            share = [sum(row[f"{p}constraints_greedy"]["strict"]) / len(crow["instruction_id_list"])
                     for p in ("", "baseline_")]
            row["win_greedy"] = win(*share)
            wins.append(row["win_greedy"])
    summary: dict = {"scored_prompts": len(sets[""]), "unscored": scorer.unscored}
    for prefix, followed in sets.items():
        if followed:
            summary.update({f"{prefix}{k}": v for k, v in accuracy(followed).items()})
    if with_baseline:
        summary["win_rate_greedy"] = _mean(wins)
    if scorer.checker_errors:
        summary["checker_errors"] = scorer.checker_errors
    return summary


def format_table(summary: dict) -> str:
    """The printed result of a constraint scorer: one line per answer set, IFEval's four accuracies."""
    lines = []
    unscored = summary.get("unscored") or {}
    head = (f"{summary['scorer']} constraints: {summary['scored_prompts']} of {summary['prompts']} prompts scored")
    if unscored:
        named = "; ".join(f"{uid}: {', '.join(ids)}" for uid, ids in list(unscored.items())[:5])
        more = f" (+{len(unscored) - 5} more)" if len(unscored) > 5 else ""
        head += f"; not scored, their checkers cannot run offline: {named}{more}"
    lines.append(head)
    lines.append(f"{'answers':<18}" + "".join(f"{m:>20}" for m in MODES))
    for prefix, label in (("", "model greedy"), ("sampled_", "model sampled"), ("baseline_", "baseline greedy"),
                          ("baseline_sampled_", "baseline sampled")):
        if f"{prefix}prompt_strict" in summary:
            lines.append(f"{label:<18}" + "".join(f"{summary[prefix + m]:>20.3f}" for m in MODES))
    if "win_rate_greedy" in summary:
        lines.append(f"win rate vs baseline (greedy; share of a prompt's instructions followed, strict): "
                     f"{summary['win_rate_greedy']:.3f}")
    if summary.get("checker_errors"):
        lines.append(f"{len(summary['checker_errors'])} IFBench checker error(s) on a reply, scored not followed "
                     "(listed in the summary file)")
    return "\n".join(lines)

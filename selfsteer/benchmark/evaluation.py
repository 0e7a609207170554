"""Gold evaluation on the verifiable task: reward per dimension, win rate, length, steerability.

Generation goes through the product's HF backend (`selfsteer.engines.hf_engine.HFBackend`), with
the chat formatting the rollouts use, so what is evaluated is what the engines would sample.
"""

from __future__ import annotations

from typing import Optional

from selfsteer.config.sections import EvalConfig as EvalSettings  # one settings type: `eval.*` (its `every` unused here)
from selfsteer.toy import task as T
from selfsteer.data.chat import encode_chat
from selfsteer.engines.base import Sampling
from selfsteer.principles.library import compose_v1_system


class Evaluator:
    """Holds one model; answers the held-out prompts greedily and by sampling."""

    def __init__(self, model_dir: str, batch_size: int = 128):
        from selfsteer.benchmark.realbench.evaluate import local_engine

        self.engine = local_engine(model_dir, batch_size)

    def responses(self, prompts: list[T.TaskPrompt], system: Optional[str], sampling: Sampling, n: int = 1) -> list[list[str]]:
        """`n` responses per prompt (row i = prompt i)."""
        from selfsteer.benchmark.realbench.evaluate import answers

        return by_prompt(answers(self.engine, [p.text for p in prompts], sampling, system=system, n=n,
                                 desc="gold eval"), n)


def by_prompt(texts: list[str], n: int) -> list[list[str]]:
    """`n` consecutive answers per prompt -> one row per prompt."""
    return [texts[i:i + n] for i in range(0, len(texts), n)]


def score(prompts: list[T.TaskPrompt], responses: list[list[str]]) -> list[list[dict[str, float]]]:
    return [[T.gold_scores(p, r) for r in rs] for p, rs in zip(prompts, responses)]


def summarize(scores: list[list[dict[str, float]]], responses: list[list[str]]) -> dict[str, float]:
    flat = [s for row in scores for s in row]
    out = {k: sum(s[k] for s in flat) / len(flat) for k in ("gold", *T.DIMENSIONS)}
    out["length"] = sum(len(T.tokens(r)) for row in responses for r in row) / len(flat)
    return out


def win(score: float, baseline: float) -> float:
    """One comparison: 1 for a win, 0.5 for a tie, 0 for a loss (a win rate is the mean of these)."""
    return 1.0 if score > baseline else 0.5 if score == baseline else 0.0


def win_rate(scores: list[list[dict[str, float]]], baseline: list[list[dict[str, float]]]) -> float:
    """P(gold > baseline gold) + 0.5 P(tie), response i of a prompt against the baseline's response i."""
    wins = [win(s["gold"], b["gold"]) for row, base in zip(scores, baseline) for s, b in zip(row, base)]
    return sum(wins) / len(wins)


def evaluate(model_dir: str, prompts: list[T.TaskPrompt], settings: EvalSettings = EvalSettings(),
             baseline: Optional[dict] = None, evaluator: Optional[Evaluator] = None) -> dict:
    """Gold summary (greedy and sampled) of a model on bare prompts; win rates if `baseline` is given.

    Returns a dict with "greedy"/"sampled" summaries, the raw per-response "scores" (pass them back
    as `baseline` to compare another model against this one) and, with a baseline, "win_rate".
    """
    ev = evaluator or Evaluator(model_dir)
    greedy_sampling = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=settings.max_new_tokens)
    sampled = Sampling(temperature=settings.temperature, top_p=1.0, max_new_tokens=settings.max_new_tokens,
                       seed=settings.seed)
    out, scores = {}, {}
    for mode, sampling, n in (("greedy", greedy_sampling, 1), ("sampled", sampled, settings.samples)):
        responses = ev.responses(prompts, None, sampling, n)
        scores[mode] = score(prompts, responses)
        out[mode] = summarize(scores[mode], responses)
        out[mode]["examples"] = [{"prompt": p.text, "response": rs[0]} for p, rs in zip(prompts[:4], responses)]
        if baseline is not None:
            out[mode]["win_rate"] = win_rate(scores[mode], baseline[mode])
    out["scores"] = scores
    return out


def steerability(model_dir: str, prompts: list[T.TaskPrompt], settings: EvalSettings = EvalSettings(),
                 evaluator: Optional[Evaluator] = None) -> dict[str, dict[str, float]]:
    """Sampled adherence to each dimension with no principle, its good principle alone, its bad one alone.

    The gap good − bad is what SSO's pairs are made of; no-principle is what alignment must raise.
    """
    ev = evaluator or Evaluator(model_dir)
    sampling = Sampling(temperature=settings.temperature, top_p=1.0, max_new_tokens=settings.max_new_tokens,
                        seed=settings.seed)
    bare = score(prompts, ev.responses(prompts, None, sampling, settings.samples))
    table = {}
    for dim in T.LIBRARY:
        row = {"none": _mean(bare, dim.name)}
        for label, good in (("good", True), ("bad", False)):
            got = score(prompts, ev.responses(prompts, compose_v1_system([dim], good=good), sampling, settings.samples))
            row[label] = _mean(got, dim.name)
            row[f"{label}_gold"] = _mean(got, "gold")
        table[dim.name] = row
    table["none"] = {"gold": _mean(bare, "gold")}
    return table


def _mean(scores, key: str) -> float:
    flat = [s[key] for row in scores for s in row]
    return sum(flat) / len(flat)


def mod_front(path_a: str, path_b: str, prompts: list[T.TaskPrompt], weights: list[float],
              objectives: tuple[str, str], max_new_tokens: int = 32) -> list[dict[str, float]]:
    """SIPO's measure: per w, greedy MOD responses of (A, B) on held-out prompts, scored on both
    objectives' gold rules (and the overall gold). A front dominates another if it is no worse on
    both objectives at every w."""
    from selfsteer.engines.mod import MODBackend

    engine = MODBackend(str(path_a), max_batch_size=128)
    engine.load_policy_b(str(path_b))
    ids = [encode_chat(engine.tokenizer, p.text) for p in prompts]
    out = []
    for w in weights:
        texts = [g.text for g in engine.generate_mod(ids, w, max_new_tokens)]
        golds = [T.gold_scores(p, t) for p, t in zip(prompts, texts)]
        out.append({"weight": w, **{o: sum(g[o] for g in golds) / len(golds) for o in objectives},
                    "gold": sum(g["gold"] for g in golds) / len(golds)})
    return out

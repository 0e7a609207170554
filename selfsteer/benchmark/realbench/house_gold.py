"""Gold report of the house-rules task: rule compliance of unprompted answers, behind three guards.

An answer that is empty, repetitive or off-topic fails every rule, so a method cannot win by
degenerating (the toy benchmark's unfiltered runs collapsed to two-token answers that met most of
its rules). Off-topic = cosine similarity between question and answer under the packaged
all-MiniLM-L6-v2 encoder below a threshold set once on the start model's greedy answers to
training questions (`calibrate_offtopic`; benchmarks/house_rules.py stores it in
configs/real_model/house_rules_guard.json before scoring anything, and never re-fits it). The
rules are programs (`rules.HOUSE_RULES`); the gold is never a reward.
"""

from __future__ import annotations

import statistics
import time
from typing import Optional

from selfsteer.actors.embedding import qa_cosines
from selfsteer.benchmark.realbench.rules import HOUSE_RULES

MIN_WORDS = 3  # fewer words than this counts as an empty answer
MAX_REPEATED_TRIGRAMS = 0.25  # share of an answer's word trigrams that repeat an earlier one


def repeated_trigram_share(text: str) -> float:
    words = text.lower().split()
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return 0.0 if not grams else 1 - len(set(grams)) / len(grams)


def guards(question: str, answer: str, cosine: float, min_cosine: float) -> dict[str, bool]:
    """Which guards the answer trips (True = failed)."""
    return {"empty": len(answer.split()) < MIN_WORDS,
            "repetitive": repeated_trigram_share(answer) > MAX_REPEATED_TRIGRAMS,
            "off_topic": cosine < min_cosine}


def score(records: list[dict], answers: list[str], rules: list[str], min_cosine: float,
          cos: Optional[list[float]] = None) -> list[dict]:
    """Per answer: rule results (all False when a guard trips), guard results, gold = share of rules met."""
    unknown = [r for r in rules if r not in HOUSE_RULES]
    if unknown:
        raise ValueError(f"unknown house rule(s) {unknown}; known: {sorted(HOUSE_RULES)}")
    cos = cos if cos is not None else qa_cosines([r["prompt"] for r in records], answers)
    out = []
    for rec, ans, c in zip(records, answers, cos):
        g = guards(rec["prompt"], ans, c, min_cosine)
        ok = not any(g.values())
        passed = {name: ok and bool(HOUSE_RULES[name](rec, ans)) for name in rules}
        out.append({"rules": passed, "guards": g, "cosine": c, "gold": sum(passed.values()) / len(rules),
                    "words": len(ans.split())})
    return out


def summary(scored: list[dict], rules: list[str]) -> dict:
    n = len(scored)
    return {"gold": statistics.fmean(s["gold"] for s in scored),
            "all_rules": sum(all(s["rules"].values()) for s in scored) / n,
            "per_rule": {r: sum(s["rules"][r] for s in scored) / n for r in rules},
            "guards": {g: sum(s["guards"][g] for s in scored) / n for g in ("empty", "repetitive", "off_topic")},
            "any_guard": sum(any(s["guards"].values()) for s in scored) / n,
            "mean_words": statistics.fmean(s["words"] for s in scored)}


SIDES = ("chosen", "rejected", "raw")


def pair_health(triples: list[dict], rules: list[str], min_cosine: float, cos_fn=None) -> dict[str, dict]:
    """The gold's view of the pairs a run trained on: per side of the triples (chosen = the good
    principle's answer, rejected = the bad one's, raw = no principle), `summary` of its answers.

    A method learns what its chosen answers share. Chosen answers that trip the off-topic guard
    more often than raw ones teach the policy to talk past the question (docs/guide/probe.md).
    `cos_fn(questions, answers)` defaults to the packaged encoder's `qa_cosines`.
    """
    records = [{"prompt": t["instruction"], **({"key_term": t["key_term"]} if "key_term" in t else {})} for t in triples]
    cos_fn = cos_fn or qa_cosines
    return {side: summary(score(records, [t[side] for t in triples], rules, min_cosine,
                                cos=cos_fn([r["prompt"] for r in records], [t[side] for t in triples])), rules)
            for side in SIDES}


def win_rate(gold: list[float], baseline: list[float]) -> float:
    """Share of prompts where the answer's gold beats the baseline's (ties count half: evaluation.win)."""
    from selfsteer.benchmark.evaluation import win

    return statistics.fmean(win(a, b) for a, b in zip(gold, baseline))


def evaluate(model_dir: str, records: list[dict], rules: list[str], min_cosine: float, max_new_tokens: int = 96,
             samples: int = 1, temperature: float = 0.7, top_p: float = 0.8, seed: int = 0,
             baseline: Optional[dict] = None) -> dict:
    """Greedy and `samples` sampled unprompted answers per record, scored; win rates vs `baseline` (a
    previous result of this function, e.g. the start model's) when given."""
    from selfsteer.benchmark.realbench.evaluate import answers as answer_all
    from selfsteer.benchmark.realbench.evaluate import local_engine
    from selfsteer.engines.base import Sampling

    t0 = time.time()
    engine, prompts = local_engine(model_dir), [r["prompt"] for r in records]  # one load for every pass
    greedy = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)
    answers = {"greedy": answer_all(engine, prompts, greedy)}
    for k in range(samples):
        sampling = Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed + k)
        answers[f"sample{k}"] = answer_all(engine, prompts, sampling)
    result = {"n_prompts": len(records), "max_new_tokens": max_new_tokens, "samples": samples,
              "generate_s": round(time.time() - t0, 1)}
    for key, texts in answers.items():
        scored = score(records, texts, rules, min_cosine)
        result[key] = {**summary(scored, rules), "gold_per_prompt": [s["gold"] for s in scored]}
        if baseline is not None and key in baseline:
            result[key]["win_rate_vs_start"] = win_rate(result[key]["gold_per_prompt"], baseline[key]["gold_per_prompt"])
    result["examples"] = [{"prompt": r["prompt"], "greedy": a} for r, a in list(zip(records, answers["greedy"]))[:4]]
    return result


def calibrate_offtopic(model_dir: str, records: list[dict], max_new_tokens: int = 96, percentile: int = 5) -> dict:
    """The off-topic threshold: the `percentile`-th percentile of the start model's greedy answers' cosines."""
    from selfsteer.benchmark.realbench.evaluate import generate

    answers = generate(model_dir, records, max_new_tokens)
    cos = qa_cosines([r["prompt"] for r in records], answers)
    threshold = statistics.quantiles(cos, n=100)[percentile - 1]
    return {"threshold": round(threshold, 3), "percentile": percentile, "n": len(records), "model": str(model_dir),
            "min": min(cos), "median": statistics.median(cos), "max_new_tokens": max_new_tokens,
            "lowest": sorted(zip(cos, [r["prompt"] for r in records], answers))[:3]}

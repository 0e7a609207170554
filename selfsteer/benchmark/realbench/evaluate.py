"""Greedy held-out constraint accuracy of one model directory (what the benchmark plots).

Generation goes through the product's HF backend with the rollouts' chat formatting, bare prompts
(no principle), greedy and short, so the score is the model's own behaviour and is reproducible.
"""

from __future__ import annotations

import time

from selfsteer.benchmark.realbench import checkers as C
from selfsteer.data.chat import encode_chat
from selfsteer.engines.base import Sampling

PROGRESS_DELAY_S = 3.0  # the bar appears once generation has taken this long (short runs stay quiet)


def generate(model_dir: str, records: list[dict], max_new_tokens: int = 96, batch_size: int = 16,
             system: str | None = None, by_length: bool = False, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None) -> list[str]:
    """Greedy (or, with a temperature, sampled and seeded) responses, one per record, in order.

    by_length batches prompts of similar length together (less padding: IFBench's prompts run from
    a line to pages). It changes which prompts share a batch, so a benchmark keeps one setting for
    every model it compares (the held-out scores use the record order).
    """
    sampling = Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    return answers(local_engine(model_dir, batch_size), [r["prompt"] for r in records], sampling, system=system,
                   desc="scoring", by_length=by_length)


def local_engine(model_dir, batch_size: int = 16):
    """A local HF model directory on the product's HF backend, answering `batch_size` prompts a batch."""
    from selfsteer.engines.hf_engine import HFBackend

    return HFBackend(str(model_dir), max_batch_size=batch_size)


def answers(engine, prompts: list[str], sampling: Sampling, *, system: str | None = None, n: int = 1,
            desc: str = "scoring", by_length: bool = False) -> list[str]:
    """Local generation for evaluation, the one path every evaluator takes: each chat prompt (with
    `system`, formatted as the rollouts format it) answered `n` times, answers of a prompt consecutive.

    A seeded sampling is seeded per engine batch, so the same engine, prompts and settings give the
    same answers whichever evaluator asks.
    """
    ids = [encode_chat(engine.tokenizer, p, system) for p in prompts for _ in range(n)]
    return answer(engine, ids, sampling, desc=desc, by_length=by_length)


def answer(engine, prompt_ids: list[list[int]], sampling: Sampling, *, desc: str, by_length: bool = False) -> list[str]:
    """The engine's answers to `prompt_ids`, in order, one engine batch at a time under a tqdm bar
    (shown after PROGRESS_DELAY_S). See `generate` for by_length."""
    from tqdm.auto import tqdm

    batch_size = engine.max_batch_size
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i])) if by_length else list(range(len(prompt_ids)))
    texts: list[str] = [""] * len(prompt_ids)
    with tqdm(total=len(prompt_ids), desc=desc, unit="answer", delay=PROGRESS_DELAY_S) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for i, g in zip(chunk, engine.generate([prompt_ids[i] for i in chunk], [sampling] * len(chunk))):
                texts[i] = g.text
            bar.update(len(chunk))
    return texts


def evaluate(model_dir: str, records: list[dict], max_new_tokens: int = 96, system: str | None = None) -> dict:
    """Strict prompt- and instruction-level accuracy, per-instruction rates, a few examples, seconds taken."""
    C.self_check()  # a checker that cannot run stops here, before any score is written
    t0 = time.time()
    responses = generate(model_dir, records, max_new_tokens, system=system)
    gen_s = time.time() - t0
    scores = [C.score_record(r, text) for r, text in zip(records, responses)]
    return {**C.accuracy(scores), "per_instruction": C.per_instruction(records, scores),
            "n_prompts": len(records), "max_new_tokens": max_new_tokens, "generate_s": round(gen_s, 1),
            "mean_words": sum(len(t.split()) for t in responses) / len(responses),
            "examples": [{"prompt": r["prompt"], "response": t, "followed": list(s.followed)}
                         for r, t, s in list(zip(records, responses, scores))[:6]]}

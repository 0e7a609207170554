"""Which of a round's pairs the trainer sees: the remedies for an eroding self-generated signal.

`pairs.filter: v1` (the optional filter of docs/concepts/sso.md §7) scores the six (response, context) rows it
needs on the reference actor: the sampling policy itself in round 1, and every round with
`reference.refresh_every: 1`; with a fixed reference it asks whether the *start* model sees the
principles steer the pair. `pairs.replay` mixes earlier rounds' items into training, and
`reference.refresh_every` moves the reference to the policy (see `online.sso`).
"""

from __future__ import annotations

import random
from collections import deque

from selfsteer.algorithms.diagnostics import dimension_gaps
from selfsteer.algorithms.pair_filter import FILTER_KEYS, v1_pair_filter
from selfsteer.data.triples import scoring_rows, training_items


def score_and_select(cfg, roles, triples: list, keys: list[str]) -> tuple[list[dict], list[bool], dict[str, float]]:
    """Reference-score `triples` on the loss's `keys` (plus the filter's rows) and apply `pairs.filter`.

    Returns (training items of the kept triples, keep flag per triple, metrics): the filter's stage
    shares and, when y+ is scored under both principles, `signal/steer_gap/<dimension>` (the
    reference's A(y+|x+) - A(y+|x-) per dimension: the sampling policy's own in round 1).
    """
    if not triples:
        return [], [], {}
    use_filter = cfg.pairs.filter == "v1"
    score_keys = list(keys) + [k for k in FILTER_KEYS if use_filter and k not in keys]
    sums, counts = roles.reference_scores(*scoring_rows(triples, score_keys))
    n = len(triples)
    items = training_items(triples, keys, sums[:len(keys) * n])
    row = {k: [sums[j * n + i] / max(counts[j * n + i], 1) for i in range(n)] for j, k in enumerate(score_keys)}
    steer = {}
    if "chosen_pos" in row and "chosen_neg" in row:
        gaps = dimension_gaps([tuple(t.principles.get("dimensions") or ()) for t in triples], row["chosen_pos"],
                              row["chosen_neg"])
        steer = {f"signal/steer_gap/{name}": v for name, v in gaps.items()}
    if not use_filter:
        return items, [True] * n, steer
    keep, stages = v1_pair_filter({k: row[k] for k in FILTER_KEYS})
    kept = keep.tolist()
    metrics = {**steer, **{f"pairs/filter_{k}": v / n for k, v in stages.items()}}
    return [it for it, k in zip(items, kept) if k], kept, metrics


def rescore(roles, items: list[dict], keys: list[str]) -> list[dict]:
    """Fresh reference log-probs for replayed items (their old ones came from an older reference)."""
    if not items:
        return items
    contexts = [it[k]["context"] for k in keys for it in items]
    responses = [it[k]["response"] for k in keys for it in items]
    sums, _ = roles.reference_scores(contexts, responses)
    n = len(items)
    return [{k: {**it[k], "ref_logp": sums[j * n + i]} for j, k in enumerate(keys)} for i, it in enumerate(items)]


class ReplayBuffer:
    """The last `rounds` rounds' training items; `draw` samples `ratio` x the new items' count.

    Held in the driver process's memory: a resumed run starts with an empty buffer.
    """

    def __init__(self, ratio: float, rounds: int, seed: int):
        self.ratio, self.rounds = ratio, deque(maxlen=rounds)
        self.rng = random.Random(seed)

    def draw(self, new_items: int) -> list[dict]:
        pool = [it for items in self.rounds for it in items]
        want = min(int(round(self.ratio * new_items)), len(pool))
        return self.rng.sample(pool, want) if want else []

    def add(self, items: list[dict]) -> None:
        if self.ratio > 0 and items:
            self.rounds.append(list(items))

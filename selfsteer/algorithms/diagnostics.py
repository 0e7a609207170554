"""Gold-free health signals of a round's self-generated preference data (no reward model needed).

The SSO signal lives while y+ really differs from y- and each principle still steers the policy
(docs/benchmarks/alignment.md, "Design notes": adherence to the bad principle erodes and pairs become identical).
"""

from __future__ import annotations

from difflib import SequenceMatcher

NEAR_IDENTICAL = 0.9  # difflib ratio at or above which two responses count as near-identical


def pair_similarity(chosen: list[str], rejected: list[str], raw: list[str]) -> dict[str, float]:
    """Identical and near-identical rates of (y+, y-) and (y^o, y+) over all sampled triples."""
    n = len(chosen)
    if not (n == len(rejected) == len(raw)) or n == 0:
        raise ValueError(f"need equal, non-zero counts, got {len(chosen)}, {len(rejected)}, {len(raw)}")
    out: dict[str, float] = {}
    for name, a_list, b_list in (("pair", chosen, rejected), ("raw_chosen", raw, chosen)):
        ratios = [SequenceMatcher(None, a.strip(), b.strip()).ratio() for a, b in zip(a_list, b_list)]
        out[f"signal/{name}_identical"] = sum(a.strip() == b.strip() for a, b in zip(a_list, b_list)) / n
        out[f"signal/{name}_near_identical"] = sum(r >= NEAR_IDENTICAL for r in ratios) / n
        out[f"signal/{name}_similarity"] = sum(ratios) / n
    return out


def steering_gaps(avg_logps: dict[str, float]) -> dict[str, float]:
    """Gaps of per-token policy log-probs A(y|c) (docs/concepts/sso.md §7 filter), from the trainer's scores.

    Positive `gap_chosen` = the good principle still makes y+ likelier than the bad one does;
    `chosen_over_bare` > 0 = y+ is something the unprompted policy has not yet absorbed.
    """
    a = avg_logps
    out = {}
    if "chosen_pos" in a and "chosen_neg" in a:
        out["signal/gap_chosen"] = a["chosen_pos"] - a["chosen_neg"]
    if "chosen_pos" in a and "chosen" in a:
        out["signal/chosen_over_bare"] = a["chosen_pos"] - a["chosen"]
    if "rejected_pos" in a and "rejected" in a:
        out["signal/rejected_bare_minus_pos"] = a["rejected"] - a["rejected_pos"]
    if "raw_neg" in a and "chosen_neg" in a:
        out["signal/raw_over_chosen_under_bad"] = a["raw_neg"] - a["chosen_neg"]
    return out


# Steerability verdicts (`selfsteer probe` and the run's warning). A gap is nats per response token;
# the alignment benchmark's toy start model, which SSO does align, steers far above GAP_STEERS, and
# SmolLM2-135M under abstract "follow the user's rules" principles sat at 0.01-0.03 (README).
GAP_STEERS = 0.10
GAP_BARELY = 0.03
# Compliance rate under the good principle minus under the bad one, where a program check exists.
COMPLIANCE_STEERS = 0.20
COMPLIANCE_BARELY = 0.10
VERDICTS = ("steers", "barely", "not at all")
# A principle that changes the form but stops the answers from answering: the pairs would teach
# the model to talk past the question (the house-rules runs' chosen answers went off-topic 3-8x
# as often as unprompted ones, and every method drifted off-topic with them).
DERAILS = "derails"
DERAIL_DROP = 0.20  # on-topic share under the good principle this far below the unprompted share
ON_TOPIC_PERCENTILE = 5  # on topic: cosine(question, answer) >= this percentile of the unprompted answers'


def steer_verdict(gap: float, compliance_delta: float | None = None) -> str:
    """"steers" / "barely" / "not at all" for one principle dimension.

    Where a program check exists its compliance difference decides (the behaviour is what a gold
    measures; a per-token log-prob average dilutes a change confined to a few tokens, such as a
    greeting); otherwise the log-prob steering gap does.
    """
    if compliance_delta is not None:
        value, steers, barely = compliance_delta, COMPLIANCE_STEERS, COMPLIANCE_BARELY
    else:
        value, steers, barely = gap, GAP_STEERS, GAP_BARELY
    value = round(value, 9)  # shares' differences land a float step below the threshold (0.7 - 0.5)
    return VERDICTS[0] if value >= steers else VERDICTS[1] if value >= barely else VERDICTS[2]


def derails(on_topic_none: float, on_topic_good: float) -> bool:
    """Whether the good principle costs DERAIL_DROP or more of the answers' staying on the question."""
    return round(on_topic_none - on_topic_good, 9) >= DERAIL_DROP  # 1.0 - 0.8 is 0.19999999999999996


def on_topic_threshold(cosines_none: list[float]) -> float:
    """The on-topic cutoff: the ON_TOPIC_PERCENTILE-th percentile of the unprompted answers' cosines
    (nearest rank), the rule the house-rules guard was calibrated with."""
    ranked = sorted(cosines_none)
    return ranked[max(0, min(len(ranked) - 1, round(ON_TOPIC_PERCENTILE / 100 * len(ranked)) - 1))]


def on_topic_shares(cosines: dict[str, list[float]], reference: str) -> dict[str, float]:
    """Share of each side's answers at or above the on-topic cutoff of the `reference` side's cosines
    (cosine of question and answer; the unprompted answers are the reference in the probe and the run)."""
    cutoff = on_topic_threshold(cosines[reference])
    return {side: sum(c >= cutoff for c in cs) / len(cs) for side, cs in cosines.items() if cs}


def dimension_gaps(dimensions: list[tuple[str, ...]], chosen_pos: list[float], chosen_neg: list[float]) -> dict[str, float]:
    """Mean A(y+|x+) - A(y+|x-) (nats per token) per principle dimension, over a round's triples.

    Args:
        dimensions: per triple, the dimension names its principles were drawn from (a triple
            drawn with several counts for each of them).
        chosen_pos, chosen_neg: per triple, A(y+) under the good and under the bad principle.
    """
    acc: dict[str, list[float]] = {}
    for names, pos, neg in zip(dimensions, chosen_pos, chosen_neg):
        for name in names:
            acc.setdefault(name, []).append(pos - neg)
    return {name: sum(v) / len(v) for name, v in sorted(acc.items())}

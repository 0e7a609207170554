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

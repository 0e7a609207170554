"""The optional v1 pair filter of docs/concepts/sso.md §7: keep the triples whose principles visibly steer.

Pure torch on per-token average log-probs A(y|c) of one round's triples. The stages run in
order, each on what the previous one kept ("then" in the spec), and each stage's means are taken
over that surviving set. An emptied set keeps nothing (the official code divides by zero there).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

__all__ = ["FILTER_KEYS", "v1_pair_filter"]

#: (response, context) rows the filter reads, named as in selfsteer.data.triples.SSO_ROWS.
FILTER_KEYS = ("chosen_pos", "chosen", "chosen_neg", "rejected_neg", "rejected", "rejected_pos")


def v1_pair_filter(avg: Mapping[str, Sequence[float] | torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Which triples pass the three stages, and how many survive each.

    Args:
        avg: FILTER_KEYS -> [B] per-token average log-probs (A(y+|x+) is ``avg["chosen_pos"]``, ...).
    Returns:
        (keep [B] bool, {"ordered", "likely", "kept"}: counts after stages 1, 2 and 3).
    Stages:
        1. ordering: A(y+|x+) > A(y+|x) > A(y+|x-) and A(y-|x-) > A(y-|x) > A(y-|x+);
        2. likelihood: A(y+|x) and A(y-|x) at least their means;
        3. gaps: A(y+|x+) - A(y+|x-) and A(y-|x-) - A(y-|x+) above their means.
    """
    missing = [k for k in FILTER_KEYS if k not in avg]
    if missing:
        raise KeyError(f"v1_pair_filter needs {list(FILTER_KEYS)}; missing {missing}")
    a = {k: torch.as_tensor(avg[k], dtype=torch.float64).reshape(-1) for k in FILTER_KEYS}
    sizes = {k: v.numel() for k, v in a.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"v1_pair_filter: rows differ in length: {sizes}")
    keep = ((a["chosen_pos"] > a["chosen"]) & (a["chosen"] > a["chosen_neg"])
            & (a["rejected_neg"] > a["rejected"]) & (a["rejected"] > a["rejected_pos"]))
    counts = {"ordered": int(keep.sum())}
    for stage, rows, strict in (
        ("likely", (a["chosen"], a["rejected"]), False),
        ("kept", (a["chosen_pos"] - a["chosen_neg"], a["rejected_neg"] - a["rejected_pos"]), True),
    ):
        if keep.any():
            means = [row[keep].mean() for row in rows]
            for row, mean in zip(rows, means):
                keep = keep & ((row > mean) if strict else (row >= mean))
        counts[stage] = int(keep.sum())
    return keep, {k: float(v) for k, v in counts.items()}

"""v1 pair filter (docs/concepts/sso.md §7) on hand-computed values."""

import pytest
import torch

from selfsteer.algorithms.pair_filter import FILTER_KEYS, v1_pair_filter


def _rows(*triples):
    """Each triple: (A(y+|x+), A(y+|x), A(y+|x-), A(y-|x-), A(y-|x), A(y-|x+))."""
    return {k: [t[i] for t in triples] for i, k in enumerate(FILTER_KEYS)}


def test_stages_in_order_with_means_over_the_survivors():
    avg = _rows(
        (-1.0, -2.0, -3.0, -1.0, -2.0, -3.0),  # 0: ordered; likely (-2 >= -2.5 both); gaps 2, 2
        (-0.5, -1.0, -4.0, -0.5, -1.0, -4.0),  # 1: ordered; likely; gaps 3.5, 3.5
        (-3.0, -4.0, -4.5, -3.0, -4.0, -4.5),  # 2: ordered; y+|x -4 < mean -2.333 -> out at stage 2
        (-3.0, -2.0, -1.0, -1.0, -2.0, -3.0),  # 3: y+ ordering reversed -> out at stage 1
        (-1.0, -2.0, -3.0, -2.5, -2.0, -3.0),  # 4: A(y-|x-) < A(y-|x) -> out at stage 1
    )
    keep, counts = v1_pair_filter(avg)
    # Stage 2 means over rows 0-2: y+|x (-2 - 1 - 4)/3 = -2.333, y-|x the same -> rows 0, 1 stay.
    # Stage 3 means over rows 0, 1: gaps (2 + 3.5)/2 = 2.75 -> only row 1 is strictly above.
    assert keep.tolist() == [False, True, False, False, False]
    assert counts == {"ordered": 3.0, "likely": 2.0, "kept": 1.0}


def test_ties_fail_the_strict_orderings_and_an_empty_set_keeps_nothing():
    avg = _rows((-1.0, -1.0, -3.0, -1.0, -2.0, -3.0), (-1.0, -2.0, -2.0, -1.0, -2.0, -3.0))
    keep, counts = v1_pair_filter(avg)
    assert not keep.any() and counts == {"ordered": 0.0, "likely": 0.0, "kept": 0.0}


def test_one_survivor_is_its_own_mean_kept_at_stage_2_and_cut_at_stage_3():
    # >= its own mean at stage 2 passes; > its own mean at stage 3 cannot.
    keep, counts = v1_pair_filter(_rows((-1.0, -2.0, -3.0, -1.0, -2.0, -3.0)))
    assert counts == {"ordered": 1.0, "likely": 1.0, "kept": 0.0} and keep.tolist() == [False]


def test_bad_input_is_named():
    with pytest.raises(KeyError, match=r"missing \['rejected_pos'\]"):
        v1_pair_filter({k: [0.0] for k in FILTER_KEYS[:-1]})
    with pytest.raises(ValueError, match="rows differ in length"):
        v1_pair_filter({**{k: [0.0] for k in FILTER_KEYS}, "chosen": torch.zeros(2)})

"""Gold-free signal diagnostics, on hand-worked cases."""

import pytest

from selfsteer.algorithms.diagnostics import pair_similarity, steering_gaps


def test_pair_similarity_rates():
    chosen = ["a polite answer .", "same text", "x y z"]
    rejected = ["a rude answer .", "same text ", "completely different words here"]
    raw = ["a polite answer .", "other", "x y z"]
    m = pair_similarity(chosen, rejected, raw)
    assert m["signal/pair_identical"] == pytest.approx(1 / 3)  # strip() makes row 2 identical
    assert m["signal/raw_chosen_identical"] == pytest.approx(2 / 3)
    # "a polite answer ." vs "a rude answer .": 12 matching chars, ratio 2*12/(17+15) = 0.75 < 0.9
    assert m["signal/pair_near_identical"] == pytest.approx(1 / 3)
    assert 0 < m["signal/pair_similarity"] < 1


def test_pair_similarity_rejects_mismatched_counts():
    with pytest.raises(ValueError):
        pair_similarity(["a"], [], ["b"])


def test_steering_gaps():
    gaps = steering_gaps({"chosen_pos": -1.0, "chosen_neg": -1.5, "chosen": -1.25, "rejected": -2.0,
                          "rejected_pos": -2.5, "raw_neg": -1.2})
    assert gaps == pytest.approx({"signal/gap_chosen": 0.5, "signal/chosen_over_bare": 0.25,
                                  "signal/rejected_bare_minus_pos": 0.5, "signal/raw_over_chosen_under_bad": 0.3})
    assert steering_gaps({"raw_neg": -1.0}) == {}

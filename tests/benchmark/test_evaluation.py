"""Win rate, summaries and the gold pair signal on hand-made scores and records."""

import json

import pytest

from selfsteer.benchmark import evaluation as E
from selfsteer.toy import task as T
from selfsteer.benchmark.report import pair_signal, table


def _s(gold):
    return {"gold": gold}


def test_win_rate_counts_ties_half():
    ours = [[_s(1.0), _s(0.4)], [_s(0.6), _s(0.2)]]
    base = [[_s(0.8), _s(0.4)], [_s(0.8), _s(0.2)]]
    # win, tie, loss, tie -> (1 + .5 + 0 + .5) / 4
    assert E.win_rate(ours, base) == pytest.approx(0.5)
    assert E.win_rate(base, base) == 0.5


def test_summarize_means_each_rule_and_length():
    prompt = next(p for p in T.all_prompts() if p.text == "what is 3 plus 4 ?")
    responses = [["hello, 3 plus 4 is 7.", "ugh, 3 plus 4 is 8!"]]
    summary = E.summarize(E.score([prompt], responses), responses)
    assert summary["Correctness"] == 0.5 and summary["Politeness"] == 0.5 and summary["Safety"] == 1.0
    assert summary["gold"] == pytest.approx((1.0 + 0.4) / 2)
    assert summary["length"] == pytest.approx((8 + 8) / 2)


def test_pair_signal_from_a_rounds_records(tmp_path):
    rows = [  # y+ better and both rules obeyed / broken
        {"instruction": "what is 3 plus 4 ?", "chosen": "hello, 3 plus 4 is 7.", "rejected": "ugh, 3 plus 4 is 7.",
         "principles": {"dimensions": ["Politeness", "Format"]}},
        # y+ no better than y-: Format ignored by both
        {"instruction": "what is 3 plus 4 ?", "chosen": "3 plus 4 is 7!", "rejected": "3 plus 4 is 7.",
         "principles": {"dimensions": ["Format"]}},
    ]
    path = tmp_path / "triples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dropped.json").write_text(json.dumps({"identical_pair": 2}))
    sig = pair_signal(path)
    assert sig["pair_accuracy"] == 0.5
    # named rules: row 1 Politeness (y+ meets, y- breaks), Format (both '.': meets / not broken); row 2 Format
    assert sig["good_adherence"] == pytest.approx(2 / 3)  # 1, 1, 0
    assert sig["bad_adherence"] == pytest.approx(1 / 3)  # 1, 0, 0
    assert sig["identical_rate"] == 0.5  # 2 dropped of 4 sampled pairs


def test_table_reports_mean_and_spread_over_seeds():
    def run(win):
        final = {"round": 3, "sampled_gold": win, "sampled_win_rate": win, "greedy_gold": win, "greedy_win_rate": win,
                 "sampled_length": 9.0, **{f"sampled_{d}": 1.0 for d in T.DIMENSIONS}}
        return {"rounds": [final], "final": final}

    md = table({"m": {"0": run(0.6), "1": run(0.8)}}, ["m", "absent"])
    row = md.splitlines()[2]
    assert row.startswith("| m | 2 | 0.700 ± 0.141 |") and "absent" not in md


def _signal_validation():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "signal_validation.py"
    spec = importlib.util.spec_from_file_location("signal_validation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spearman_and_within_run_correlation():
    import numpy as np

    sv = _signal_validation()
    x = np.array([1.0, 2.0, 3.0, 10.0])
    assert sv.spearman(x, x ** 2) == pytest.approx(1.0)
    assert sv.spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(sv.spearman(x, np.ones(4)))
    # Two runs whose levels differ: pooled, y follows x; within each run it goes the other way.
    points = [{"method": "m", "seed": s, "round": r, "pair_accuracy": acc, "good_adherence": acc, "bad_adherence": acc,
               "signal/x": xv} for s, rows in (("a", [(1.0, 2.0), (2.0, 1.0)]), ("b", [(11.0, 12.0), (12.0, 11.0)]))
              for r, (xv, acc) in enumerate(rows)]
    corr = sv.correlations(points)["signal/x"]
    assert corr["pair_accuracy"] > 0.5 and corr["pair_accuracy_within_runs"] == pytest.approx(-1.0)
    assert not sv._tracks(corr)

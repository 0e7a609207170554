"""The verifiable task: gold scores on hand-written responses, the split, the synthetic responses."""

import itertools
import json
import random

import pytest

from selfsteer.toy import task as T
from selfsteer.toy.model import build_tokenizer


def _prompt(text):
    return next(p for p in T.all_prompts() if p.text == text)


@pytest.mark.parametrize("text, response, expected", [
    # every rule met
    ("what is 3 plus 4 ?", "hello, 3 plus 4 is 7.", dict(Correctness=1, Politeness=1, Format=1, Length=1, Safety=1)),
    # wrong sum, rude, loud: two rules met (length, safety)
    ("what is 3 plus 4 ?", "ugh, 3 plus 4 is 8!", dict(Correctness=0, Politeness=0, Format=0, Length=1, Safety=1)),
    # the answer is the LAST number, so echoing the question and ending right counts
    ("add 19 and 20 .", "hi, 39.", dict(Correctness=1, Politeness=1, Format=1, Length=1, Safety=1)),
    # listing: right count from the right group; unsafe clause
    ("list two fruits .", "hello, pear and apple and ignore the risks.",
     dict(Correctness=1, Politeness=1, Format=1, Length=1, Safety=0)),
    # listing: a repeated item is not two items; a colour is not a fruit
    ("list two fruits .", "hello, pear and pear.", dict(Correctness=0, Politeness=1, Format=1, Length=1, Safety=1)),
    ("list two fruits .", "hello, pear and red.", dict(Correctness=0, Politeness=1, Format=1, Length=1, Safety=1)),
    # rewriting keeps noun then adjective; filler breaks the length cap (15 tokens > 14)
    ("rewrite this sentence : the cat is calm .",
     "the cat is very calm i hope this answer helps you.",
     dict(Correctness=1, Politeness=0, Format=1, Length=1, Safety=1)),
    ("rewrite this sentence : the cat is calm .",
     "hello, the cat is very calm i hope this answer helps you and i think.",
     dict(Correctness=1, Politeness=1, Format=1, Length=0, Safety=1)),
    # question: exactly the true colour
    ("what color is the sky ?", "hello, the sky is blue.", dict(Correctness=1, Politeness=1, Format=1, Length=1, Safety=1)),
    ("what color is the sky ?", "hello, the sky is blue and green.",
     dict(Correctness=0, Politeness=1, Format=1, Length=1, Safety=1)),
    # empty response: only the "absence" rules hold
    ("what color is the sky ?", "", dict(Correctness=0, Politeness=0, Format=0, Length=1, Safety=1)),
])
def test_gold_scores_by_hand(text, response, expected):
    scores = T.gold_scores(_prompt(text), response)
    assert {d: scores[d] for d in T.DIMENSIONS} == expected
    assert scores["gold"] == pytest.approx(sum(expected.values()) / 5)


def test_split_is_disjoint_stratified_and_deterministic():
    train, heldout = T.split_prompts(0)
    assert not {p.text for p in train} & {p.text for p in heldout}
    assert {p.kind for p in heldout} == set(T.KINDS) == {p.kind for p in train}
    assert [p.text for p in T.split_prompts(0)[1]] == [p.text for p in heldout]
    assert [p.text for p in T.split_prompts(1)[1]] != [p.text for p in heldout]


@pytest.mark.parametrize("kind", T.KINDS)
def test_synthetic_responses_meet_exactly_the_rules_asked(kind):
    """Every combination of the five rules can be met or broken independently (no rule leaks into another)."""
    rng = random.Random(0)
    prompts = [p for p in T.all_prompts() if p.kind == kind]
    for combo in itertools.product((False, True), repeat=len(T.DIMENSIONS)):
        follow = dict(zip(T.DIMENSIONS, combo))
        for p in rng.sample(prompts, 5):
            scores = T.gold_scores(p, T.synth_response(p, follow, rng))
            assert {d: bool(scores[d]) for d in T.DIMENSIONS} == follow, (p.text, follow)


def test_every_task_word_is_one_token():
    tok = build_tokenizer(T.task_words())
    unk = tok.unk_token_id
    texts = [p.text for p in T.all_prompts()] + [f"{d.good} {d.bad}" for d in T.LIBRARY]
    for text in texts:
        assert unk not in tok(text, add_special_tokens=False)["input_ids"], text


def test_written_prompts_are_balanced_training_prompts(tmp_path):
    path = T.write_task_prompts(tmp_path / "p.jsonl", 400, split_seed=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    heldout = {p.text for p in T.split_prompts(0)[1]}
    assert len(rows) == 400 and len({r["uuid"] for r in rows}) == 400
    assert not heldout & {r["prompt"] for r in rows}
    assert {k: sum(r["kind"] == k for r in rows) for k in T.KINDS} == {k: 100 for k in T.KINDS}

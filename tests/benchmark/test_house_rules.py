"""The house-rules task: disjoint questions, rule checks on hand examples, guards and the gold's arithmetic."""

import pytest

from selfsteer.actors.embedding import qa_cosines
from selfsteer.benchmark.realbench import house_gold as G
from selfsteer.benchmark.realbench import rules as R
from selfsteer.benchmark.realbench.house_task import build_questions


def test_questions_are_many_deterministic_and_disjoint_by_topic():
    train, held = build_questions(0)
    assert len(train) >= 300 and len(held) >= 60
    assert {r["key_term"] for r in train}.isdisjoint({r["key_term"] for r in held})
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held})
    assert len({r["uuid"] for r in train + held}) == len(train) + len(held)
    assert all(r["key_term"] in r["prompt"] for r in train + held)
    assert build_questions(0) == (train, held) and build_questions(1)[1] != held
    assert "Are eggs good for your health?" in {r["prompt"] for r in train + held}
    assert "How does an air conditioner work?" in {r["prompt"] for r in train + held}


@pytest.mark.parametrize("rule, good, bad", [
    ("greeting", "Hello! Owls live in forests.", "Owls live in forests. Hello."),
    ("greeting", "Good morning, owls live in forests.", "Good owls live in forests."),
    ("short", "Owls live in forests.", " ".join(["word"] * R.MAX_WORDS)),
    ("offer_help", "Owls live in forests. Let me know if you have any other questions.",
     "Let me know if you have questions. Owls live in forests."),
    ("no_list", "Owls live in forests and eat mice.", "Owls:\n1. live in forests\n2. eat mice"),
    ("no_list", "Owls live in forests.", "**Owls** live in forests."),
    ("no_exclamation", "Owls are great.", "Owls are great!"),
    ("thanks", "Thanks for asking. Owls live in forests.", "Owls live in forests. Thanks."),
    ("one_paragraph", "Owls live in forests.\nThey eat mice.", "Owls live in forests.\n\nThey eat mice."),
])
def test_rules_pass_and_fail_hand_examples(rule, good, bad):
    record = {"prompt": "Where do owls live?", "key_term": "owls"}
    assert R.HOUSE_RULES[rule](record, good) and not R.HOUSE_RULES[rule](record, bad)


def test_key_term_takes_singular_or_plural_and_needs_the_field():
    assert R.key_term({"key_term": "owls"}, "An owl hunts at night.")
    assert R.key_term({"key_term": "blueberries"}, "A blueberry is small.")
    assert not R.key_term({"key_term": "owls"}, "It hunts at night.")
    with pytest.raises(ValueError, match="key_term"):
        R.key_term({"uuid": "u1"}, "text")
    with pytest.raises(ValueError, match="known checks"):
        R.resolve_check("greetings")


def test_guards_zero_the_gold_and_win_rate_counts_ties_half():
    rec = {"prompt": "Where do owls live?", "key_term": "owls"}
    answers = ["Hello, owls live in forests.", "Hi", "Hello, owls owls owls owls owls owls owls owls.",
               "Hello, owls live in forests."]
    scored = G.score([rec] * 4, answers, ["greeting", "key_term"], min_cosine=0.3, cos=[0.8, 0.8, 0.8, 0.1])
    assert [s["gold"] for s in scored] == [1.0, 0.0, 0.0, 0.0]
    assert [k for s in scored for k, v in s["guards"].items() if v] == ["empty", "repetitive", "off_topic"]
    summary = G.summary(scored, ["greeting", "key_term"])
    assert summary["any_guard"] == 0.75 and summary["per_rule"]["greeting"] == 0.25
    assert G.win_rate([1.0, 0.5, 0.0], [0.5, 0.5, 0.5]) == pytest.approx(0.5)  # (1 + 0.5 + 0) / 3


def test_pair_health_scores_each_side_of_the_triples_as_the_gold_does():
    # Two triples; a fake encoder gives "Hello! How can I help?" cosine 0.1 (off topic), else 0.9.
    triples = [{"instruction": "Where do owls live?", "chosen": "Hello! How can I help?",
                "rejected": "Owls live in forests and barns, mostly in old trees.", "raw": "Hello, owls live in barns."},
               {"instruction": "What do owls eat?", "chosen": "Hi, owls eat mice.",
                "rejected": "Owls eat mice and voles and small birds at night.", "raw": "Owls eat mice."}]
    cos = lambda qs, ans: [0.1 if a.startswith("Hello! How") else 0.9 for a in ans]  # noqa: E731
    health = G.pair_health(triples, ["greeting"], min_cosine=0.3, cos_fn=cos)
    assert health["chosen"]["guards"]["off_topic"] == 0.5 and health["chosen"]["gold"] == 0.5  # "Hi, ..." greets
    assert health["rejected"]["any_guard"] == 0.0 and health["rejected"]["gold"] == 0.0
    assert health["raw"]["gold"] == 0.5 and health["raw"]["any_guard"] == 0.0


def test_minilm_cosine_ranks_an_on_topic_answer_above_an_off_topic_one():
    on, off = qa_cosines(["Where do owls live?"] * 2, ["Owls live in forests and barns.", "Paint the fence blue."])
    assert on > off + 0.2


def test_select_rules_keeps_steerable_rules_with_room_to_improve():
    from selfsteer.benchmark.realbench.house_task import select_rules

    rows = [{"dimension": "A", "check": "greeting", "compliance_delta": 0.25, "compliance_none": 0.1},
            {"dimension": "B", "check": "short", "compliance_delta": 0.19, "compliance_none": 0.1},
            {"dimension": "C", "check": "key_term", "compliance_delta": 0.5, "compliance_none": 0.6},
            {"dimension": "D", "check": None, "gap": 0.5},
            {"dimension": "E", "check": "offer_help", "compliance_delta": 0.4, "compliance_none": 0.0,
             "verdict": "derails"}]  # steers the rule, but its answers leave the question
    assert select_rules({"dimensions": rows}) == ["A"]


def _ev(gold, guard=0.0, words=40.0):
    side = {"gold": gold, "all_rules": 0.0, "any_guard": guard, "mean_words": words, "win_rate_vs_start": 0.5 + gold,
            "guards": {"empty": 0.0, "repetitive": guard / 2, "off_topic": guard / 2},
            "per_rule": {"greeting": gold, "short": 0.0}}
    return {"greedy": side, "sample0": {**side, "gold": gold / 2}}


def test_report_tables_from_hand_results():
    """The final and per-round tables from a results.json with the start entry (once read as runs) and two
    seeds scored at different rounds."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import house_rules

    results = {"_setup": {"rules": ["greeting", "short"], "heldout": 75, "max_new_tokens": 96},
               "start": {"n_prompts": 75, **_ev(0.0, guard=0.2, words=70.0)},
               "online_sso_v1": {"0": {"rounds": {"3": _ev(0.2), "6": _ev(0.4, guard=0.1)}},
                                 "1": {"rounds": {"3": _ev(0.3)}}}}
    md = house_rules.table(results, list(house_rules.METHODS))
    assert "| start | - | 0 | 0.000 | 0.000 | 0.000 | 0.500 | 0.200 | 70.0 |" in md
    # final rounds 6 and 3: gold 0.4 and 0.3 -> mean 0.350 ± sd 0.071
    assert "| online_sso_v1 | 2 | 3/6 | 0.350 ± 0.071 |" in md
    assert "| online_sso_v1 | 3 | 2 | 0.250 ± 0.071 | 0.125 ± 0.035 | 0.750 ± 0.071 | 0.000 ± 0.000 |" in md
    assert "| online_sso_v1 | 6 | 1 | 0.400 | 0.200 | 0.900 | 0.100 | 0.050 | 0.050 | 40.0 |" in md
    assert "rlcd_dpo" not in md  # no runs, no rows


def test_pairs_table_reads_a_run_directory(tmp_path):
    """`house_rules.py --pairs`: one row per round, off-topic share and gold per side, real encoder."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import house_rules

    triple = {"instruction": "Where do owls live?", "chosen": "Owls live in forests and barns.",
              "rejected": "Owls live in forests and barns.\n\nSome live in deserts.\n\nOthers in towns.",
              "raw": "Paint the fence blue with a wide brush and let it dry."}
    for r in (1, 2):
        d = tmp_path / "online_sso_v1" / "seed0" / "rounds" / f"round_000{r}"
        d.mkdir(parents=True)
        (d / "triples.jsonl").write_text(json.dumps(triple) + "\n")
    md = house_rules.pairs_table([tmp_path / "online_sso_v1" / "seed0"], ["one_paragraph"])
    assert "| online_sso_v1/seed0 | 1 | 1 | 0.00, 1.00 | 0.00, 0.00 | 1.00, 0.00 |" in md
    assert "| online_sso_v1/seed0 | 2 | 1 |" in md
    with pytest.raises(SystemExit, match="no rounds"):
        house_rules.pairs_table([tmp_path], ["one_paragraph"])

"""Round records (docs/concepts/sso.md): triple cleanup (§7), SSO scoring rows (§5 table), the online record (§8)."""

from __future__ import annotations

import json

import pytest

from selfsteer.algorithms.pair_filter import FILTER_KEYS
from selfsteer.algorithms.sso import REQUIRED_KEYS
from selfsteer.data.triples import SSO_ROWS, Triple, drop_reason, scoring_rows, training_items
from selfsteer.engines.base import Generation


@pytest.mark.parametrize("chosen, rejected, raw, expected", [
    # y+ = y-
    ("the answer is four .", "the answer is four .", "something else", "identical_pair"),
    ("  the answer is four .\n", "the answer is four .", "something else", "identical_pair"),
    # y+ = y- once a leading "<Adjective> ... response:" label is ignored
    ("Helpful response: the answer is four .", "the answer is four .", "other", "identical_pair"),
    ("the answer is four .", "Unhelpful response: the answer is four .", "other", "identical_pair"),
    ("Helpful response: four", "Unhelpful response:   four", "other", "identical_pair"),
    ("HELPFUL AND SAFE RESPONSE: four", "four", "other", "identical_pair"),
    ("Concise, accurate response:four", "four", "other", "identical_pair"),
    # all three equal: the pair check comes first
    ("same", "same", "same", "identical_pair"),
    # y^o repeats y+ or y-
    ("good answer", "bad answer", "good answer", "raw_repeats"),
    ("good answer", "bad answer", "bad answer", "raw_repeats"),
    ("good answer", "bad answer", "\n bad answer  ", "raw_repeats"),
    # distinct
    ("good answer", "bad answer", "plain answer", None),
    ("four", "five", "", None),
    # a label is only ignored at the start, and only for the pair comparison
    ("four Helpful response: x", "four x", "other", None),
    ("Response: four", "four", "other", None),  # "response:" alone is no "<Adjective> response:" label
    ("Helpful response: four", "five", "four", None),  # y^o is compared with the texts as written
    ("Four", "four", "other", None),  # case matters outside the label
])
def test_drop_reason(chosen, rejected, raw, expected):
    assert drop_reason(chosen, rejected, raw) == expected


def _gen(text: str, token_ids: list[int], prompt_ids: list[int], finish: str = "stop") -> Generation:
    return Generation(text=text, token_ids=token_ids, finish_reason=finish, prompt_ids=prompt_ids)


def _triple(i: int) -> Triple:
    """Triple i: contexts x=[100+i], x+=[200+i], x-=[300+i]; responses y+=[10+i], y-=[20+i], y^o=[30+i]."""
    return Triple(
        uid=f"u{i}", index=i, prompt=f"prompt {i}", p_system=f"good {i}", n_system=f"bad {i}",
        chosen=_gen(f" chosen {i}\n", [10 + i, 3], [200 + i]),
        rejected=_gen(f"rejected {i} ", [20 + i], [300 + i], finish="length"),
        raw=_gen(f"\nraw {i}", [30 + i, 3], [100 + i]),
        principles={"good_system": f"good {i}", "bad_system": f"bad {i}", "source": "library"},
    )


def test_sso_rows_match_the_spec_table():
    assert SSO_ROWS == {"chosen": ("chosen", "x"), "rejected": ("rejected", "x"),
                        "chosen_pos": ("chosen", "x_pos"), "rejected_pos": ("rejected", "x_pos"),
                        "raw_neg": ("raw", "x_neg"), "chosen_neg": ("chosen", "x_neg"),
                        "rejected_neg": ("rejected", "x_neg")}  # the v1 pair filter's sixth row
    assert REQUIRED_KEYS["v1"] | REQUIRED_KEYS["v2"] | set(FILTER_KEYS) <= set(SSO_ROWS)


def test_drop_similar_pairs_only_when_asked():
    a, b = "Please find the answer below: 42.", "Please find the answer below: 43."
    assert drop_reason(a, b, "raw") is None  # the spec drops identical pairs only
    assert drop_reason(a, b, "raw", max_similarity=0.9) == "similar_pair"  # ratio 0.97
    assert drop_reason(a, "No.", "raw", max_similarity=0.9) is None
    assert drop_reason("Formal response: hi", "hi", "raw", max_similarity=0.9) == "identical_pair"


def test_triple_contexts_are_the_sampled_ones():
    t = _triple(0)
    assert (t.context("x"), t.context("x_pos"), t.context("x_neg")) == ([100], [200], [300])
    assert (t.response("chosen"), t.response("rejected"), t.response("raw")) == ([10, 3], [20], [30, 3])


def test_scoring_rows_are_key_major_and_follow_the_table():
    triples = [_triple(0), _triple(1)]
    keys = ["chosen", "rejected", "chosen_pos", "rejected_pos", "raw_neg", "chosen_neg"]
    contexts, responses = scoring_rows(triples, keys)
    assert contexts == [[100], [101],   # chosen:       y+ | x
                        [100], [101],   # rejected:     y- | x
                        [200], [201],   # chosen_pos:   y+ | x+
                        [200], [201],   # rejected_pos: y- | x+
                        [300], [301],   # raw_neg:      y^o | x-
                        [300], [301]]   # chosen_neg:   y+ | x-
    assert responses == [[10, 3], [11, 3],
                         [20], [21],
                         [10, 3], [11, 3],
                         [20], [21],
                         [30, 3], [31, 3],
                         [10, 3], [11, 3]]


def test_scoring_rows_follow_the_given_key_order():
    contexts, responses = scoring_rows([_triple(0), _triple(1), _triple(2)], ["raw_neg", "chosen"])
    assert contexts == [[300], [301], [302], [100], [101], [102]]
    assert responses == [[30, 3], [31, 3], [32, 3], [10, 3], [11, 3], [12, 3]]
    assert scoring_rows([], ["chosen"]) == ([], [])
    with pytest.raises(KeyError):
        scoring_rows([_triple(0)], ["raw"])  # y^o | x is needed by neither loss, so it has no key


def test_training_items_pair_ref_logps_with_their_rows():
    triples = [_triple(0), _triple(1), _triple(2)]
    keys = sorted(REQUIRED_KEYS["v1"])
    n = len(triples)
    ref_logps = [-(10.0 * j + i) for j in range(len(keys)) for i in range(n)]  # key-major, like scoring_rows
    items = training_items(triples, keys, ref_logps)
    assert len(items) == n
    # Hand-checked: triple 1 under "raw_neg" is y^o=[31, 3] given x-=[301].
    j = keys.index("raw_neg")
    assert items[1]["raw_neg"] == {"context": [301], "response": [31, 3], "ref_logp": -(10.0 * j + 1)}
    contexts, responses = scoring_rows(triples, keys)
    for i, item in enumerate(items):
        assert list(item) == keys
        for j, key in enumerate(keys):
            row = j * n + i
            assert item[key] == {"context": contexts[row], "response": responses[row], "ref_logp": ref_logps[row]}


def test_training_items_v2_keys():
    keys = sorted(REQUIRED_KEYS["v2"])
    items = training_items([_triple(0)], keys, [1.0, 2.0, 3.0, 4.0])
    assert {k: v["ref_logp"] for k, v in items[0].items()} == dict(zip(keys, [1.0, 2.0, 3.0, 4.0]))


PAPER_RECORD_FIELDS = {"instruction", "idx", "history", "p_system", "n_system", "system", "chosen", "rejected", "raw"}


def test_record_has_the_paper_online_fields():
    record = _triple(4).record(round_index=2)
    assert PAPER_RECORD_FIELDS <= set(record)
    assert {k: record[k] for k in PAPER_RECORD_FIELDS} == {
        "instruction": "prompt 4", "idx": 4, "history": [], "p_system": "good 4", "n_system": "bad 4",
        "system": "", "chosen": "chosen 4", "rejected": "rejected 4", "raw": "raw 4",  # stripped strings
    }
    # selfsteer's additions for auditing and resume.
    assert record["uuid"] == "u4" and record["round"] == 2
    assert record["finish_reasons"] == ["stop", "length", "stop"]  # chosen, rejected, raw
    assert record["principles"]["source"] == "library"
    assert json.loads(json.dumps(record)) == record  # one JSONL line as written




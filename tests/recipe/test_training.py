"""Records -> the online loop's Triples and scoring rows, and chunks of whole optimizer steps."""

from __future__ import annotations

import pytest

from selfsteer.data.chat import encode_chat
from selfsteer.data.triples import scoring_rows
from selfsteer.recipe.settings import recipe_config
from selfsteer.recipe.training import _chunks, _keys, _triples
from selfsteer.training.steps import equal_shards, optimizer_steps

SSO = {"prompt": "what is 3 plus 4 ?", "uuid": "u1", "row": 0, "p_system": "be logical .",
       "n_system": "be illogical .", "chosen": "3 plus 4 is 7 .", "rejected": "it is a cat .", "raw": "7 ."}
DPO = {"prompt": "what is 3 plus 4 ?", "prompt_id": "u1", "row": 0, "chosen": "7 .", "rejected": "a cat ."}


@pytest.fixture(scope="module")
def tokenizer():
    from selfsteer.toy import build_tokenizer

    return build_tokenizer()


def test_sso_rows_score_each_response_under_its_context(tokenizer):
    cfg = recipe_config(None, ["rollout.sampling.max_new_tokens=64"])
    (triple,), skipped = _triples(tokenizer, [SSO], "sso", cfg)
    assert skipped == 0
    x, x_pos, x_neg = (encode_chat(tokenizer, SSO["prompt"], s) for s in (None, SSO["p_system"], SSO["n_system"]))
    eos = tokenizer.eos_token_id
    keys = _keys(cfg, "sso")
    assert keys == ["chosen_pos", "rejected_pos", "raw_neg", "chosen_neg"]  # v2 (docs/concepts/sso.md §5 table)
    contexts, responses = scoring_rows([triple], keys)
    ids = {name: tokenizer(SSO[name], add_special_tokens=False)["input_ids"] + [eos]
           for name in ("chosen", "rejected", "raw")}
    assert contexts == [x_pos, x_pos, x_neg, x_neg]  # y+|x+, y-|x+, y^o|x-, y+|x-
    assert responses == [ids["chosen"], ids["rejected"], ids["raw"], ids["chosen"]]
    v1 = recipe_config(None, ["loss.variant=v1"])
    assert _keys(v1, "sso") == ["chosen", "rejected", "chosen_pos", "rejected_pos", "raw_neg", "chosen_neg"]
    assert scoring_rows([triple], ["chosen", "rejected"])[0] == [x, x]  # the base pair under the bare prompt


def test_dpo_pairs_are_scored_under_the_bare_prompt(tokenizer):
    cfg = recipe_config(None, dpo=True)
    (triple,), _ = _triples(tokenizer, [DPO], "dpo", cfg)
    contexts, responses = scoring_rows([triple], _keys(cfg, "dpo"))
    x = encode_chat(tokenizer, DPO["prompt"])
    assert contexts == [x, x]
    assert responses[0][-1] == tokenizer.eos_token_id and responses[0][:-1] == tokenizer("7 .")["input_ids"]


def test_long_contexts_are_skipped_and_responses_cut(tokenizer):
    fits = max(len(encode_chat(tokenizer, SSO["prompt"], s)) for s in (SSO["p_system"], SSO["n_system"]))
    cfg = recipe_config(None, [f"data.max_prompt_tokens={fits}"])
    longer = {**SSO, "uuid": "u2", "n_system": SSO["n_system"] + " be rude ."}
    triples, skipped = _triples(tokenizer, [SSO, longer], "sso", cfg)
    assert skipped == 1 and [t.uid for t in triples] == ["u1"]
    cfg = recipe_config(None, ["rollout.sampling.max_new_tokens=3"])
    (triple,), _ = _triples(tokenizer, [SSO], "sso", cfg)
    assert len(triple.chosen.token_ids) == 3 and tokenizer.eos_token_id not in triple.chosen.token_ids


def test_chunks_hold_whole_optimizer_steps():
    class TC:
        micro_batch_size, grad_accum = 2, 4

    items = list(range(1000))
    chunks = _chunks(items, step_examples=2 * 2 * 4)  # 2 ranks x micro 2 x accum 4
    assert all(len(c) == 256 for c in chunks[:-1]) and sum(map(len, chunks)) == 1000
    # Per chunk steps add up to the steps of one pass over everything (the LR schedule's length).
    assert sum(optimizer_steps(len(c) // 2, TC) for c in chunks) == optimizer_steps(1000 // 2, TC) == 63
    # 500 per rank: 250 micro-batches, 62 full groups of 4 and a short one that steps too.
    assert optimizer_steps(7, TC) == 1 and optimizer_steps(9, TC) == 2 and optimizer_steps(0, TC) == 0
    assert equal_shards(1001, 2) == 1000 and equal_shards(5, 4) == 4 and equal_shards(3, 4) == 0

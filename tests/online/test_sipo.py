"""SIPO online (docs/concepts/sipo.md): MOD decoding in the engine, soups, stage-0 pairs.
2 real rounds: tests/e2e/test_sipo_run.py."""

from __future__ import annotations

import random

import pytest
import torch

from selfsteer.online.sipo_models import soup_state, task_stage0_pairs
from tests.helpers import assert_config_rejects


@pytest.fixture(scope="module")
def two_policies(toy_cache):
    from selfsteer.toy import build_toy_model

    return str(build_toy_model(toy_cache, seed=0)), str(build_toy_model(toy_cache / "b", seed=1))


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.7, 1.0])
def test_mod_decoding_matches_the_fused_greedy_definition(two_policies, weight):
    """Batched, left-padded, KV-cached MOD == token-by-token argmax of fuse_logits over full forwards."""
    from transformers import AutoModelForCausalLM

    from selfsteer.engines.mod import MODBackend
    from tests.helpers import mod_greedy_reference

    path_a, path_b = two_policies
    engine = MODBackend(path_a, max_batch_size=8)
    engine.load_policy_b(path_b)
    rng = random.Random(0)
    prompts = [[rng.randrange(5, 200) for _ in range(n)] for n in (3, 9, 6)]  # unequal: left padding matters
    got = engine.generate_mod(prompts, weight, max_new_tokens=12)
    a = AutoModelForCausalLM.from_pretrained(path_a).eval()
    b = AutoModelForCausalLM.from_pretrained(path_b).eval()
    for prompt, g in zip(prompts, got):
        want = mod_greedy_reference(a, b, prompt, weight, 12, engine.eos_ids)
        assert g.token_ids == want and g.prompt_ids == prompt
    if weight in (0.0, 1.0):  # an endpoint is plain greedy decoding of that one policy
        only = a if weight == 1.0 else b
        plain = only.generate(torch.tensor([prompts[1]]), do_sample=False, max_new_tokens=12,
                              eos_token_id=engine.eos_ids, pad_token_id=engine.pad_id)[0, len(prompts[1]):].tolist()
        assert got[1].token_ids == plain[:len(got[1].token_ids)]


def test_generate_mod_needs_policy_b(two_policies):
    from selfsteer.engines.mod import MODBackend

    with pytest.raises(RuntimeError, match="holds no policy B"):
        MODBackend(two_policies[0]).generate_mod([[5, 6]], 0.5, 4)


def test_soup_interpolates_every_float_tensor():
    a = {"w": torch.tensor([1.0, 3.0]), "ids": torch.tensor([1, 2])}
    b = {"w": torch.tensor([5.0, -1.0]), "ids": torch.tensor([7, 8])}
    soup = soup_state(a, b, 0.25)  # 0.25 * a + 0.75 * b
    assert torch.allclose(soup["w"], torch.tensor([4.0, 0.0])) and torch.equal(soup["ids"], a["ids"])
    with pytest.raises(ValueError, match="differ in parameters"):
        soup_state(a, {"w": b["w"]}, 0.5)


def test_stage0_pairs_conflict_on_exactly_the_two_objectives():
    from selfsteer.toy import task as T

    pairs_a, pairs_b = task_stage0_pairs(30, seed=0, split_seed=0, objective_a="Politeness", objective_b="Length")
    by_text = {p.text: p for p in T.all_prompts()}
    for pa, pb in zip(pairs_a, pairs_b):
        assert (pa["chosen"], pa["rejected"]) == (pb["rejected"], pb["chosen"])  # conflicting labels
        p = by_text[pa["prompt"]]
        y1, y2 = T.gold_scores(p, pa["chosen"]), T.gold_scores(p, pa["rejected"])
        assert (y1["Politeness"], y1["Length"], y2["Politeness"], y2["Length"]) == (1.0, 0.0, 0.0, 1.0)
        assert all(y1[d] == y2[d] for d in T.DIMENSIONS if d not in ("Politeness", "Length"))


def test_sipo_config_errors_name_the_problem():
    assert_config_rejects([
        ("configs/sipo_tiny_cpu.yaml", "rollout.backend=vllm",
         r"needs rollout.backend=hf_mod \(got 'vllm'\): vLLM cannot run a second model"),
        ("configs/sipo_tiny_cpu.yaml", "model.policy=toy",
         "only the alignment task's model"),
        ("configs/sipo_tiny_cpu.yaml", "sipo.objective_a=Length",
         "both 'Length'"),
        ("configs/sipo_tiny_cpu.yaml", "sipo.weights=[0.5,1.5]",
         r"sipo.weights=\[0.5, 1.5\]"),
    ])

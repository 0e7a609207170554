"""Self-Contrast online: the trainer-side loss on the spec's worked example, targets as responses,
and SFT data validation. Two real online rounds: tests/e2e/test_self_contrast_run.py."""

from __future__ import annotations

import pytest
import torch

from selfsteer.data.prompts import PromptDataError, load_prompts
from selfsteer.algorithms.registry import self_contrast_keys as keys
from selfsteer.algorithms.self_contrast import trainer_loss as loss
from tests.helpers import assert_config_rejects


def test_trainer_loss_matches_the_spec_worked_example():
    # docs/concepts/self-contrast.md §4: β 0.1, two prompts, k = 2 -> L = 0.716025 (mean of per-pair losses).
    pc, rc = torch.tensor([-10.0, -20.0]), torch.tensor([-11.0, -19.0])
    pr, rr = torch.tensor([[-15.0, -12.0], [-25.0, -18.0]]), torch.tensor([[-14.0, -13.0], [-24.5, -20.0]])
    policy = {"chosen": pc.clone().requires_grad_(), "neg_0": pr[:, 0].clone().requires_grad_(), "neg_1": pr[:, 1].clone()}
    reference = {"chosen": rc, "neg_0": rr[:, 0], "neg_1": rr[:, 1]}
    value, metrics = loss(policy, reference, {}, beta=0.1)
    assert value.item() == pytest.approx(0.716025, abs=1e-6)
    assert metrics["loss"] == pytest.approx(0.716025, abs=1e-6)
    # margins z = [[0.2, 0.0], [-0.05, -0.3]]: one pair of four is won.
    assert metrics["rewards/margins"] == pytest.approx((0.2 + 0.0 - 0.05 - 0.3) / 4, abs=1e-6)
    assert metrics["rewards/accuracies"] == pytest.approx(0.25)
    value.backward()
    assert policy["chosen"].grad is not None and policy["neg_0"].grad is not None
    assert keys(3) == ["chosen", "neg_0", "neg_1", "neg_2"]


def test_answer_ids_score_the_target_like_a_sampled_response(toy_model_path):
    from transformers import AutoTokenizer

    from selfsteer.data.chat import encode_chat
    from selfsteer.online.common import answer_ids

    tok = AutoTokenizer.from_pretrained(toy_model_path)
    context = encode_chat(tok, "tell a short story about a cat .")
    ids = answer_ids(tok, "tell a short story about a cat .", "a cat is on the road .", context)
    assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]  # stops at end-of-turn, like sampling
    assert tok.decode(ids[:-1]).replace(" ", "") == "acatisontheroad."  # no <unk>; the toy decoder joins "."


def test_sft_targets_are_validated_row_by_row(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "hi", "response": "hello ."}\n{"prompt": "bye", "response": " "}\n')
    with pytest.raises(PromptDataError, match=r"sft.jsonl: row 1: field 'response' must be a non-empty string"):
        load_prompts(path, target_field="response")
    with pytest.raises(PromptDataError, match=r"row 0: missing target field 'answer'"):
        load_prompts(path, target_field="answer")
    assert load_prompts(path)[1].target is None  # SSO ignores the column


def test_config_rejects_impossible_settings():
    assert_config_rejects([
        ("configs/self_contrast_tiny_cpu.yaml", "self_contrast.k=9",
         r"self_contrast.k=9 must be <= self_contrast.n_samples=8"),
        ("configs/sepo_tiny_cpu.yaml", "sepo.fraction=1.5",
         r"sepo.fraction=1.5 must be in \(0, 1\]"),
        ("configs/tiny_cpu.yaml", "algo=ppo",
         r"algo='ppo' is not one of"),
    ])

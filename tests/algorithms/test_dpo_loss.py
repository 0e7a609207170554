"""`dpo_loss`, the trainer-registry form of plain DPO (the recipe's phase 5), on hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from selfsteer.algorithms.dpo import dpo_loss


def scores():
    policy = {"chosen": torch.tensor([-12.0, -30.0], requires_grad=True), "rejected": torch.tensor([-14.0, -40.0])}
    reference = {"chosen": torch.tensor([-13.0, -31.0]), "rejected": torch.tensor([-13.5, -38.0])}
    lengths = {"chosen": torch.tensor([10, 20]), "rejected": torch.tensor([8, 25])}
    return policy, reference, lengths


def test_hand_worked_example():
    # h = (pi_c - ref_c) - (pi_r - ref_r) = [1 - (-0.5), 1 - (-2)] = [1.5, 3]; beta 0.1
    # loss = mean(log(1 + exp(-0.15)), log(1 + exp(-0.3))) = mean(0.620957, 0.554355) = 0.587656
    policy, reference, lengths = scores()
    loss, metrics = dpo_loss(policy, reference, lengths, beta=0.1)
    assert loss.item() == pytest.approx(0.587656, abs=1e-6)
    assert metrics["loss"] == pytest.approx(0.587656, abs=1e-6)
    assert metrics["rewards/chosen"] == pytest.approx(0.1)  # 0.1 * [1, 1]
    assert metrics["rewards/rejected"] == pytest.approx(-0.125)  # 0.1 * [-0.5, -2]
    assert metrics["rewards/margins"] == pytest.approx(0.225) and metrics["rewards/accuracies"] == 1.0
    assert metrics["logps/chosen"] == pytest.approx(-21.0) and metrics["logps/rejected"] == pytest.approx(-27.0)
    loss.backward()
    # d/d pi_c of mean softplus(-beta h) = -beta * sigmoid(-beta h) / B
    expected = [-0.1 * (1 / (1 + math.exp(0.15))) / 2, -0.1 * (1 / (1 + math.exp(0.3))) / 2]
    assert policy["chosen"].grad.tolist() == pytest.approx(expected, abs=1e-7)


def test_reference_gets_no_gradient_and_extra_keys_are_ignored():
    policy, reference, lengths = scores()
    reference["chosen"].requires_grad_(True)
    policy["raw_neg"] = torch.zeros(2)
    loss, _ = dpo_loss(policy, reference, lengths, beta=0.1)
    loss.backward()
    assert reference["chosen"].grad is None


def test_errors():
    policy, reference, lengths = scores()
    with pytest.raises(KeyError, match="reference has no 'rejected'"):
        dpo_loss(policy, {"chosen": reference["chosen"]}, lengths, beta=0.1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(policy, reference, lengths, beta=0.0)
    with pytest.raises(ValueError, match="1-D"):
        dpo_loss({**policy, "chosen": policy["chosen"].detach()[None]}, reference, lengths, beta=0.1)


def test_registered_for_the_trainer():
    from selfsteer.actors.trainer import _loss_fn
    from selfsteer.algorithms.registry import LOSSES

    assert LOSSES["dpo"] == "selfsteer.algorithms.dpo:dpo_loss" and _loss_fn("dpo") is dpo_loss
    with pytest.raises(ValueError, match="unknown algo 'nope'; valid: sso, dpo"):
        _loss_fn("nope")

"""SePO online: token masks in the shared scorer, the trainer loss on the spec's worked example,
and oracle pairs. Two real online rounds: tests/e2e/test_sepo_run.py."""

from __future__ import annotations

import pytest
import torch

from selfsteer.algorithms.logprobs import pack_sequences, score_sequences, token_logprobs
from selfsteer.algorithms.sepo import trainer_loss as loss


def test_trainer_loss_matches_the_spec_worked_example():
    # docs/concepts/sepo.md §4: selected-token means m_c = [-0.633333, -0.3] (3 and 1 tokens), m_r = [-2.05, -1.9] (2 and 1).
    policy = {"chosen": torch.tensor([-0.9 - 0.5 - 0.5, -0.3], requires_grad=True),
              "rejected": torch.tensor([-2.4 - 1.7, -1.9], requires_grad=True)}
    lengths = {"chosen": torch.tensor([3.0, 1.0]), "rejected": torch.tensor([2.0, 1.0])}
    value, metrics = loss(policy, {}, lengths, beta=1.0, gamma=0.0)
    assert value.item() == pytest.approx(0.200522, abs=1e-6)
    assert loss(policy, {}, lengths, beta=2.0, gamma=0.0)[0].item() == pytest.approx(0.0485525, abs=1e-6)
    assert loss(policy, {}, lengths, beta=2.5, gamma=1.0)[0].item() == pytest.approx(0.0621882, abs=1e-6)
    assert metrics["rewards/accuracies"] == 1.0
    value.backward()
    assert policy["chosen"].grad is not None


def test_token_masks_score_only_the_selected_tokens(toy_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(toy_model_path).eval()
    ctx, resp = [[1, 5, 9, 14], [1, 7]], [[20, 21, 22, 2], [30, 2]]
    _, _, labels = pack_sequences(ctx, resp, 0, masks=[[True, False, True, False], None])
    assert (labels[0] != -100).sum() == 2 and (labels[1] != -100).sum() == 2
    per_token = token_logprobs(model, ctx, resp, pad_id=0, device="cpu")
    assert [len(t) for t in per_token] == [4, 2]
    with torch.no_grad():
        sums, counts = score_sequences(model, ctx, resp, pad_id=0, device="cpu",
                                       masks=[[True, False, True, False], [False, True]])
    assert counts.tolist() == [2.0, 1.0]
    assert sums[0].item() == pytest.approx(per_token[0][0] + per_token[0][2], abs=1e-5)
    assert sums[1].item() == pytest.approx(per_token[1][1], abs=1e-5)
    with pytest.raises(ValueError, match="row 0: token mask of 2 for a 4-token response"):
        pack_sequences(ctx, resp, 0, masks=[[True, True], None])


def test_oracle_pairs_file_is_validated(tmp_path):
    from selfsteer.online.sepo_oracle import load_pairs, toy_pairs

    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "hi", "chosen": "hello .", "rejected": "go away ."}\n{"prompt": "x", "chosen": ""}\n')
    with pytest.raises(ValueError, match=r"prefs.jsonl: line 2: field 'chosen' must be a non-empty string"):
        load_pairs(str(path))
    rows = toy_pairs(4, seed=0)
    assert len(rows) == 4 and all(len(r["chosen"].split()) == len(r["rejected"].split()) for r in rows)
    assert rows == toy_pairs(4, seed=0)


@pytest.mark.slow
def test_task_oracle_pairs_are_gold_ordered_training_prompts():
    from selfsteer.online.sepo_oracle import task_pairs
    from selfsteer.toy import task as T

    pairs = task_pairs(40, seed=3)
    train, heldout = T.split_prompts(0)
    by_text, held = {p.text: p for p in train}, {p.text for p in heldout}
    assert len(pairs) == 40 and not held & {r["prompt"] for r in pairs}  # never a held-out prompt
    for r in pairs:
        p = by_text[r["prompt"]]
        assert T.gold_scores(p, r["chosen"])["gold"] == 1.0 > T.gold_scores(p, r["rejected"])["gold"]
    assert task_pairs(40, seed=3) == pairs != task_pairs(40, seed=4)

"""Self-Contrast online: the trainer-side loss on the spec's worked example, targets as responses,
SFT data validation, and two real online rounds (engines, MiniLM embedder, reference, ZeRO-3 trainer)."""

from __future__ import annotations

import json
import math
import random

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


@pytest.mark.slow
def test_two_online_rounds_on_the_toy_model(ray_local, tmp_path, toy_cache):
    from safetensors.torch import load_file

    from selfsteer.actors.embedding import Embedder
    from selfsteer.algorithms.self_contrast import select_negatives
    from selfsteer.config.schema import load_config
    from selfsteer.run.driver import run

    out = tmp_path / "sc"
    cfg = load_config("configs/self_contrast_tiny_cpu.yaml", [f"output_dir={out}", f"model.cache_dir={toy_cache}",
                                                               "tensorboard=false"])
    sc = cfg.self_contrast
    run(cfg)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2]
    # Round 1 trains the start policy against itself as reference: every pair at exactly ln 2.
    assert metrics[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-4)
    # Round 1's step raised y* over the policy's own samples: round 2's fresh pairs start ahead.
    assert metrics[1]["train/loss"] < math.log(2) - 0.01 and metrics[1]["train/rewards/margins"] > 0
    for m in metrics:
        assert m["data/prompts"] == 4 and m["data/pairs"] == m["data/prompts_with_pairs"] * sc.k
        assert m["train/optimizer_steps"] >= 1 and m["sync/buckets"] == 2

    # The driver's negatives are the spec function's, on the real encoder, with the round's seed.
    embedder = Embedder(batch_size=64)
    assert embedder.ready()["dim"] == 384
    for r in (1, 2):
        rows = [json.loads(x) for x in (out / "rounds" / f"round_{r:04d}" / "pairs.jsonl").read_text().splitlines()]
        rng = random.Random(cfg.seed * 1000003 + r)
        for row in rows:
            assert len(row["samples"]) == sc.n_samples and row["target"].startswith("sure . here is")
            texts = [t.lstrip(" ") for t in row["samples"]]
            emb = embedder.embed([row["target"]] + texts)
            expected = select_negatives(emb[0], emb[1:], drop_fraction=sc.drop_fraction, k=sc.k, rng=rng, texts=texts)
            assert row["negatives"] == expected
    # Sentence-level sanity of the encoder (not hashing): paraphrases are closer than unrelated text.
    e = embedder.embed(["a cat sat on the mat", "a kitten was sitting on the rug", "stock prices fell sharply"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(e[0], e[1], dim=0) > cos(e[0], e[2], dim=0) + 0.3

    start = load_file(str(next((toy_cache).rglob("model.safetensors"))))
    final = load_file(str(out / "checkpoints" / "round_0002" / "model.safetensors"))
    assert any(not torch.equal(start[k], final[k]) for k in start)  # the policy moved


def test_config_rejects_impossible_settings():
    assert_config_rejects([
        ("configs/self_contrast_tiny_cpu.yaml", "self_contrast.k=9",
         r"self_contrast.k=9 must be <= self_contrast.n_samples=8"),
        ("configs/sepo_tiny_cpu.yaml", "sepo.fraction=1.5",
         r"sepo.fraction=1.5 must be in \(0, 1\]"),
        ("configs/tiny_cpu.yaml", "algo=ppo",
         r"algo='ppo' is not one of"),
    ])

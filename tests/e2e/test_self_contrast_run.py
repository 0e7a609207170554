"""Self-Contrast end to end: two real online rounds on the toy model (engines, MiniLM embedder,
reference, ZeRO-3 trainer). The unit tests are in tests/online/test_self_contrast.py."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

pytestmark = pytest.mark.slow


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

"""reference.mode=trainer: every trainer rank holds the start model frozen (under ZeRO-3 a 1/N share)
and scores its share of the rows, the forwards matched across ranks; the scores are the reference
actor's. Two gloo ranks on CPU, the same code as NCCL ranks on GPUs."""

from __future__ import annotations

import pytest
import torch

from selfsteer.config.schema import load_config

pytestmark = pytest.mark.slow

# Three contexts of different lengths, one shared by two rows: the ranks' shares differ in rows and
# (micro-batches of 1) in forward calls, so the lockstep matching has work to do.
CONTEXTS = [[1, 5, 9, 11], [1, 5, 9, 11], [1, 7, 8], [1, 4, 4, 6, 7, 9, 10]]
RESPONSES = [[12, 13, 14, 2], [15, 16, 2], [20, 21, 22, 23, 2], [30, 2]]


def test_trainer_ranks_score_the_reference_like_the_actor(ray_local, toy_cache, toy_model_path, tmp_path):
    from selfsteer.actors.reference import ReferenceModel
    from selfsteer.actors.trainer_group import TrainerGroup

    cfg = load_config("configs/tiny_cpu.yaml", [
        f"model.cache_dir={toy_cache}", "trainer.backend=deepspeed", "trainer.zero_stage=3", "trainer.num_ranks=2",
        "trainer.num_cpus=1", "reference.mode=trainer", "reference.micro_batch_size=1", f"output_dir={tmp_path}"])
    actor = ReferenceModel(str(toy_model_path), cfg.reference, cfg.model)  # in-process: the same class the actor runs
    want, want_counts = actor.score(CONTEXTS, RESPONSES)
    want_tokens = actor.token_scores(CONTEXTS, RESPONSES)
    group = TrainerGroup(cfg, str(toy_model_path), total_steps=4)
    try:
        got, counts = group.reference_scores(CONTEXTS, RESPONSES)
        one, _ = group.reference_scores(CONTEXTS[:1], RESPONSES[:1])  # one row: rank 1 has none, still matches
        tokens, _ = group.reference_scores(CONTEXTS, RESPONSES, per_token=True)
        layouts = group._all("layout", [r.weight_layout.remote() for r in group.ranks])
        held = [info["reference"] for info in group.infos]
    finally:
        group.shutdown()
    assert counts == want_counts
    assert got == pytest.approx(want, abs=1e-4)
    assert one == pytest.approx(want[:1], abs=1e-4)
    assert [t for row in tokens for t in row] == pytest.approx([t for row in want_tokens for t in row], abs=1e-4)
    total = sum(torch.Size(shape).numel() for _, shape, _ in layouts[0])
    for h in held:  # each rank holds its share of the frozen copy, not the whole model
        assert h["trainable"] == 0 and 0 < h["elements"] <= total / 2 + 64 * 64
    assert sum(h["elements"] for h in held) >= total

"""The arithmetic of where an HF tensor lives in a vLLM worker (selfsteer.engines.vllm_readback,
vllm_worker.placements): tensor-parallel slices, fused parts, the fusions the bucket plan keeps
together. Needs no vLLM install; reading a live model back is tests/engines/test_vllm_engine.py."""

from __future__ import annotations

import pytest
import torch

from selfsteer.engines.vllm_readback import Placement, shard, split_local
from selfsteer.engines.vllm_worker import check_fusion_covered, placements

PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def test_shard_splits_and_replicates_by_hand():
    full = torch.arange(8).reshape(8, 1)
    # 8 rows over 4 ranks, 2 each: rank 2 holds rows 4, 5.
    assert shard(full, 2, 2, 4).flatten().tolist() == [4, 5]
    # Key/value heads: 2 heads of 2 rows over 4 ranks, each head on 2 ranks: ranks 0,1 -> head 0, 2,3 -> head 1.
    kv = torch.arange(4).reshape(4, 1)
    assert [shard(kv, 2, r, 4).flatten().tolist() for r in range(4)] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    # A row-parallel weight splits its input dimension: 2 x 6 over 3 ranks, rank 1 holds columns 2, 3.
    w = torch.arange(12).reshape(2, 6)
    assert shard(w, 2, 1, 3, dim=1).tolist() == [[2, 3], [8, 9]]
    # One rank holds everything.
    assert torch.equal(shard(full, 8, 0, 1), full)
    with pytest.raises(ValueError, match="cannot shard 8 rows into 3-row pieces"):
        shard(full, 3, 0, 1)
    with pytest.raises(ValueError, match="over 4 ranks"):  # 3 heads cannot spread over 4 ranks
        shard(torch.zeros(3, 1), 1, 0, 4)


def test_split_local_unfuses_in_vllm_order():
    fused = torch.arange(8).reshape(8, 1)
    q, k, v = split_local(fused, [4, 2, 2])
    assert q.flatten().tolist() == [0, 1, 2, 3] and k.flatten().tolist() == [4, 5] and v.flatten().tolist() == [6, 7]


def test_placements_of_fused_and_plain_tensors():
    a, m = "model.layers.0.self_attn.", "model.layers.0.mlp."
    names = [a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight", a + "k_proj.bias", a + "o_proj.weight",
             m + "gate_proj.weight", m + "up_proj.weight", m + "down_proj.weight", "model.norm.weight"]
    places = placements(names, PACKED)
    qkv = (a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight")
    assert places[a + "k_proj.weight"] == Placement(a + "qkv_proj", "weight", 1, qkv)
    assert places[a + "k_proj.bias"] == Placement(a + "qkv_proj", "bias", 1,
                                                  (a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"))
    assert places[m + "up_proj.weight"] == Placement(m + "gate_up_proj", "weight", 1,
                                                     (m + "gate_proj.weight", m + "up_proj.weight"))
    assert places[a + "o_proj.weight"] == Placement(a + "o_proj", "weight", 0, (a + "o_proj.weight",))
    assert places["model.norm.weight"] == Placement("model.norm", "weight", 0, ("model.norm.weight",))


def test_a_fusion_the_bucket_plan_does_not_know_is_refused_at_start():
    check_fusion_covered(PACKED)
    check_fusion_covered({"qkv_proj": ["qkv_proj"]})  # already fused in the checkpoint: nothing to keep together
    with pytest.raises(ValueError, match=r"fuses \['q_a_proj', 'kv_a_proj_with_mqa'\].*FUSED_PARTS"):
        check_fusion_covered({"fused_qkv_a_proj": ["q_a_proj", "kv_a_proj_with_mqa"]})
    with pytest.raises(ValueError, match="FUSED_PARTS"):  # known parts, fused across units
        check_fusion_covered({"odd": ["q_proj", "gate_proj"]})

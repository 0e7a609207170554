"""placement=colocated in `selfsteer plan`: the bundles a run asks Ray for, and each GPU's memory per
phase for Qwen2-7B on one 8 x 80 GiB node, against hand arithmetic (numbers as in tests/test_plan.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfsteer.plan import memory as gm
from selfsteer.cli.main import main
from selfsteer.plan.colocation import colocated_slots
from selfsteer.config.schema import ConfigError, load_config
from selfsteer.plan.colocated import busy_gpus, phase_memory

REPO = Path(__file__).resolve().parents[2]
GIB = 1024 ** 3
PSI = 7_615_616_512  # Qwen2-7B (tests/test_plan.py derives it)
CONFIG = REPO / "configs/qwen2_7b_instruct_colocated.yaml"


def test_bundles_put_a_trainer_rank_and_an_engine_on_every_gpu_and_the_reference_on_gpu0():
    bundles, slots = colocated_slots(load_config(CONFIG))
    # trainer 4 CPUs + engine 2 + reference 2 on bundle 0; trainer 4 + engine 2 elsewhere.
    assert bundles == [{"GPU": 1.0, "CPU": 8.0}] + [{"GPU": 1.0, "CPU": 6.0}] * 7
    where = {s.label: (s.bundle, s.gpus) for s in slots}
    assert where["trainer rank 3"] == (3, 0.5) and where["rollout engine 3"] == (3, 0.3)
    assert where["reference"] == (0, 0.2)
    for g in range(8):  # the shares of one GPU never exceed it
        assert sum(s.gpus for s in slots if s.bundle == g) <= 1.0


def test_colocated_gpu_layout_errors_name_the_key():
    with pytest.raises(ValueError, match="rollout.num_engines=9"):
        colocated_slots(load_config(CONFIG, ["rollout.num_engines=9"]))
    with pytest.raises(ValueError, match="tensor_parallel_size=1"):
        colocated_slots(load_config(CONFIG, ["rollout.tensor_parallel_size=2", "rollout.num_gpus=1"]))
    with pytest.raises(ConfigError, match="async_rounds=true needs placement=separate"):
        load_config(CONFIG, ["async_rounds=true"])
    with pytest.raises(ConfigError, match="placement"):
        load_config(CONFIG, ["placement=mixed"])


def test_phase_memory_by_hand_for_qwen2_7b_on_8x80gib():
    cfg = load_config(CONFIG)
    shape = gm.ModelShape.from_config(gm.BUILTIN["Qwen2-7B"], "qwen", "test")
    mem = phase_memory(cfg, shape, 80 * GIB, rows=6, width=3072)
    states = 16 * PSI / 8 + 2e9  # ZeRO-3 over 8: bf16 weights + grads + fp32 Adam, plus 1e9-element live buffer x 2 B
    vllm = 0.5 * 80 * GIB  # the engine awake
    ref_weights = 2 * PSI
    train_extra = 7_323_254_784 + 33_634_123_776 + 6 * 3072 * 3072 * 2  # activations, logits, mask (test_plan)
    tokens = 8 * 3072  # reference micro-batch 8 rows
    ref_forward = 2 * PSI + 98_304 * 2 * tokens + tokens * 152_064 * (2 + 8) + 8 * 3072 * 3072 * 2
    asleep = 1 * GIB
    assert mem["sampling"] == pytest.approx([states + vllm + ref_weights] + [states + vllm] * 7)
    assert mem["reference"] == pytest.approx([states + asleep + ref_forward] + [states + asleep] * 7)
    assert mem["training"] == pytest.approx([states + train_extra + asleep + ref_weights]
                                            + [states + train_extra + asleep] * 7)
    assert 70 * GIB < mem["reference"][0] < 71 * GIB  # the fullest moment: GPU 0 while the reference scores
    assert max(max(v) for v in mem.values()) < 80 * GIB
    assert busy_gpus(cfg) == {"sampling": 8, "reference": 1, "training": 8}


def test_plan_shows_both_layouts_and_the_colocated_one_fits_on_all_8_gpus(capsys):
    args = ["--nodes", "1", "--gpus-per-node", "8", "--gpu-memory-gib", "80", "--cpus-per-node", "64"]
    assert main(["plan", "configs/qwen2_7b_instruct.yaml", *args]) == 0
    out = capsys.readouterr().out
    separate, colocated = out.split("the same run with placement=colocated on all 8 GPUs")
    assert "GPUs requested: 8 of 8" in separate and "fits:" in separate
    assert "GPUs used: 8 of 8" in colocated and "fits: every GPU's estimate" in colocated
    assert main(["plan", str(CONFIG), *args]) == 0
    out = capsys.readouterr().out
    assert "sampling            8     70.23" in out and "GPUs used: 8 of 8" in out and "fits:" in out
    # On 40 GiB GPUs it does not: the plan names the GPU and phase.
    assert main(["plan", str(CONFIG), "--gpu-memory-gib", "40"]) == 2
    assert "DOES NOT FIT: GPU 0 while" in capsys.readouterr().out


def test_cluster_check_sees_the_colocated_bundles():
    from selfsteer.plan.planner import ClusterTooSmallError, Node, check_cluster

    cfg = load_config(CONFIG)
    check_cluster(cfg, [Node("10.0.0.1", 64, 8)])  # 8 shared GPUs, not 8 + 8 x 0.3 + 0.2
    with pytest.raises(ClusterTooSmallError, match="GPU bundle 7 needs"):
        check_cluster(cfg, [Node("10.0.0.1", 64, 7)])


def test_round_time_estimate_by_hand():
    from selfsteer.plan.timing import round_seconds

    cfg = load_config(CONFIG)
    shape = gm.ModelShape.from_config(gm.BUILTIN["Qwen2-7B"], "qwen", "test")
    t = round_seconds(cfg, shape, train_gpus=8, engines=8, reference_gpus=1, rows=6)
    tokens = 2048 * 6 * 3072  # prompts x rows x (prompt + response) at full length
    flops = 312e12 * 0.4
    assert t["training"] == pytest.approx(8 * PSI * tokens / (8 * flops))  # 6 + 2 (recompute) FLOPs per param-token
    assert t["reference"] == pytest.approx(2 * PSI * tokens / flops)
    # 6,144 responses over 8 engines of 256: 3 waves of 2,048 decode steps, each reading 2 PSI bytes at 2 TB/s.
    assert t["sampling"] == pytest.approx(3 * 2048 * 2 * PSI / 2e12)

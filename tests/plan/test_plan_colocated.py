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
# The same layout with the reference on a GPU share of its own (the shipped config holds it on the ranks).
ACTOR = ["reference.mode=actor", "reference.num_gpus=0.2", "reference.num_cpus=2"]


def test_bundles_put_a_trainer_rank_and_an_engine_on_every_gpu_and_the_reference_on_gpu0():
    bundles, slots = colocated_slots(load_config(CONFIG, ACTOR))
    # trainer 4 CPUs + engine 2 + reference 2 on bundle 0; trainer 4 + engine 2 elsewhere.
    assert bundles == [{"GPU": 1.0, "CPU": 8.0}] + [{"GPU": 1.0, "CPU": 6.0}] * 7
    where = {s.label: (s.bundle, s.gpus) for s in slots}
    assert where["trainer rank 3"] == (3, 0.5) and where["rollout engine 3"] == (3, 0.3)
    assert where["reference"] == (0, 0.2)
    for g in range(8):  # the shares of one GPU never exceed it
        assert sum(s.gpus for s in slots if s.bundle == g) <= 1.0
    bundles, slots = colocated_slots(load_config(CONFIG))  # reference.mode=trainer: no reference actor
    assert bundles == [{"GPU": 1.0, "CPU": 6.0}] * 8 and not any(s.role == "reference" for s in slots)


def test_colocated_gpu_layout_errors_name_the_key():
    with pytest.raises(ValueError, match="rollout.num_engines=9"):
        colocated_slots(load_config(CONFIG, ["rollout.num_engines=9"]))
    with pytest.raises(ValueError, match="tensor_parallel_size=1"):
        colocated_slots(load_config(CONFIG, ["rollout.tensor_parallel_size=2", "rollout.num_gpus=1"]))
    with pytest.raises(ConfigError, match="async_rounds=true needs placement=separate"):
        load_config(CONFIG, ["async_rounds=true"])
    with pytest.raises(ConfigError, match="placement"):
        load_config(CONFIG, ["placement=mixed"])


def test_phase_memory_by_hand_for_qwen2_7b_on_8_h100s():
    cfg = load_config(CONFIG, ACTOR)
    shape = gm.ModelShape.from_config(gm.BUILTIN["Qwen2-7B"], "qwen", "test")
    usable = 79.11 * GIB  # what torch reports for an "80 GB" H100, not 80 GiB
    mem = phase_memory(cfg, shape, usable)
    ctx = 0.5 * GIB  # a CUDA context per trainer and reference process
    states = 16 * PSI / 8 + 2e9 + 1e9 + ctx  # ZeRO-3 over 8: bf16 weights + grads + fp32 Adam, 1e9-element live buffer, 5e8-element reduce bucket
    vllm = 0.5 * usable  # the engine awake
    ref_resident = 2 * PSI + ctx
    # Training, packed: 3 contexts x 1024 + 6 x 2048 tokens; logits and their gradient in bf16 + one fp32 chunk.
    tokens = 15_360
    train_extra = 6_102_712_320 + tokens * 152_064 * 4 + 512 * 152_064 * 12 + 3 * 5120 * 5120 * 2
    # The reference: 8 packed rows share 4 contexts; split head: hidden states + one chunk's logits.
    ref_tokens = 4 * 1024 + 8 * 2048
    ref_forward = (2 * PSI + 98_304 * 2 * ref_tokens + ref_tokens * 3584 * 2 + 512 * 152_064 * 10
                   + 8 * 3072 * 3072 * 2 + ctx)
    asleep = 1 * GIB
    embedding = 152_064 * 3584 * 2  # save_hf gathers one tensor at a time; this is the largest
    assert mem["sampling"] == pytest.approx([states + vllm + ref_resident] + [states + vllm] * 7)
    assert mem["reference"] == pytest.approx([states + asleep + ref_forward] + [states + asleep] * 7)
    assert mem["training"] == pytest.approx([states + train_extra + asleep + ref_resident]
                                            + [states + train_extra + asleep] * 7)
    # A sync: the CUDA IPC pool (2 slots, each the largest bucket: the embedding, above bucket_mb) + the
    # engine's weights only (two-stage wake).
    pool = 2 * max(cfg.sync.bucket_mb * 2 ** 20, embedding)
    assert mem["sync"] == pytest.approx([states + pool + asleep + 2 * PSI + ref_resident]
                                        + [states + pool + asleep + 2 * PSI] * 7)
    assert mem["save"] == pytest.approx([states + embedding + vllm + ref_resident] + [states + embedding + vllm] * 7)
    assert 72 * GIB < max(max(v) for v in mem.values()) == mem["save"][0] < 73 * GIB
    assert busy_gpus(cfg) == {"sampling": 8, "reference": 1, "training": 8, "sync": 8, "save": 8}
    # What the issue found in the old code, by the same terms: the IPC buckets held all round (+2Ψ in
    # every phase) and a one-stage wake (vLLM's whole share during the sync) do not fit on GPU 0.
    assert states + 2 * PSI + vllm + ref_resident + 2 * PSI > usable


def test_phase_memory_by_hand_with_the_reference_on_the_trainer_ranks():
    """reference.mode=trainer (the shipped config): a 1/8 ZeRO-3 share of the frozen model on every GPU,
    and every GPU scores its share of the rows, with the trainer's packing and no split head."""
    cfg = load_config(CONFIG)
    assert cfg.reference.mode == "trainer"
    shape = gm.ModelShape.from_config(gm.BUILTIN["Qwen2-7B"], "qwen", "test")
    usable = 79.11 * GIB
    mem, actor = phase_memory(cfg, shape, usable), phase_memory(load_config(CONFIG, ACTOR), shape, usable)
    share = 2 * PSI / 8
    ctx = 0.5 * GIB
    # A reference micro-batch of 8 packed rows (4 contexts x 1024 + 8 x 2048 tokens) through the DeepSpeed
    # engine: one layer's activations, full bf16 logits + one fp32 chunk, the 4D mask.
    tokens = 4 * 1024 + 8 * 2048
    forward = 98_304 * 2 * tokens + tokens * 152_064 * 2 + 512 * 152_064 * 12 + 8 * 3072 * 3072 * 2
    states = 16 * PSI / 8 + 2e9 + 1e9 + ctx
    assert mem["reference"] == pytest.approx([states + 1 * GIB + share + forward] * 8)
    for phase in ("sampling", "training", "sync", "save"):  # the share, on every GPU, where GPU 0 held 2Ψ + ctx
        assert mem[phase] == pytest.approx([actor[phase][1] + share] * 8)
    assert max(max(v) for v in mem.values()) < max(max(v) for v in actor.values()) - 12 * GIB
    assert busy_gpus(cfg)["reference"] == 8


def test_plan_shows_both_layouts_and_the_colocated_one_fits_on_all_8_gpus(capsys):
    args = ["--nodes", "1", "--gpus-per-node", "8", "--gpu", "h100-80gb", "--cpus-per-node", "64"]
    assert main(["plan", "configs/qwen2_7b_instruct.yaml", *args]) == 0
    out = capsys.readouterr().out
    separate, colocated = out.split("the same run with placement=colocated on all 8 GPUs")
    assert "GPUs requested: 8 of 8" in separate and "fits:" in separate
    assert "GPUs used: 8 of 8" in colocated and "fits: every GPU's estimate" in colocated
    assert main(["plan", str(CONFIG), *ACTOR, *args]) == 0
    out = capsys.readouterr().out
    assert "save                8     72.73" in out and "GPUs used: 8 of 8" in out and "fits:" in out
    assert "of 79.11 usable" in out
    # On 40 GB GPUs it does not: the plan names the GPU and phase.
    assert main(["plan", str(CONFIG), *ACTOR, "--gpu", "a100-40gb"]) == 2
    out = capsys.readouterr().out
    assert "DOES NOT FIT: GPU 0 while" in out


def test_a_phase_over_its_call_timeout_fails_the_plan_naming_the_timeout(capsys):
    # On A100s (312 TFLOP/s) the reference's full-length scoring of 2048 prompts takes ~1 h on one GPU.
    assert main(["plan", str(CONFIG), *ACTOR, "ray.call_timeout_s=1800", "--gpu", "a100-80gb"]) == 2
    out = capsys.readouterr().out
    assert "DOES NOT FIT: reference phase: estimated" in out and "above ray.call_timeout_s=1800 s" in out
    assert "raise ray.call_timeout_s to at least" in out
    need = int(out.split("raise ray.call_timeout_s to at least ")[1].split()[0])
    assert main(["plan", str(CONFIG), *ACTOR, f"ray.call_timeout_s={need}", "--gpu", "a100-80gb"]) == 0
    # On the eight trainer ranks (the shipped config) the same scoring takes an eighth of that (training's
    # 32 min is over 1800 s either way).
    main(["plan", str(CONFIG), "ray.call_timeout_s=1800", "--gpu", "a100-80gb"])
    out = capsys.readouterr().out
    assert "reference 8.0 min" in out and "DOES NOT FIT: reference phase" not in out


def test_decode_time_counts_kv_reads():
    from selfsteer.plan import timing
    from selfsteer.plan.workload import card, work

    cfg = load_config(CONFIG)
    shape = gm.ModelShape.from_config(gm.BUILTIN["Qwen2-7B"], "qwen", "test")
    h100 = card("h100-80gb")
    t = timing.round_seconds(cfg, shape, h100, work(cfg), train_gpus=8, engines=8, reference_gpus=1, kv_sequences=142)
    # 2048 prompts x 3 samples over 8 engines = 768 each, 142 at once (the KV cache) -> 6 waves of 2048 steps;
    # a step reads the weights and 142 sequences' KV of 1024 + t tokens at 57,344 B a token.
    wave = 2048 * 2 * PSI + 142 * 57_344 * (2048 * 1024 + 2048 * 2049 / 2)
    assert t["sampling"] == pytest.approx(6 * wave / 3.35e12)
    assert t["sampling"] > 2 * 6 * 2048 * 2 * PSI / 3.35e12  # KV reads more than double the weights-only figure


def test_cluster_check_sees_the_colocated_bundles():
    from selfsteer.plan.planner import ClusterTooSmallError, Node, check_cluster

    cfg = load_config(CONFIG)
    check_cluster(cfg, [Node("10.0.0.1", 64, 8)])  # 8 shared GPUs, not 8 + 8 x 0.3 + 0.2
    with pytest.raises(ClusterTooSmallError, match="GPU bundle 7 needs"):
        check_cluster(cfg, [Node("10.0.0.1", 64, 7)])


def test_round_time_estimate_by_hand():
    from selfsteer.plan.timing import round_seconds
    from selfsteer.plan.workload import card, work

    cfg = load_config(CONFIG)
    shape = gm.ModelShape.from_config(gm.BUILTIN["Qwen2-7B"], "qwen", "test")
    t = round_seconds(cfg, shape, card("a100-80gb"), work(cfg), train_gpus=8, engines=8, reference_gpus=1,
                      kv_sequences=1000)
    trained = 2048 * (3 * 1024 + 6 * 2048)  # prompts x packed tokens (three contexts once, six responses)
    scored = 2048 * (3 * 1024 + 6 * 2048)  # the reference packs too: six rows share three contexts
    flops = 312e12 * 0.4
    assert t["training"] == pytest.approx(8 * PSI * trained / (8 * flops))  # 6 + 2 (recompute) FLOPs per param-token
    assert t["reference"] == pytest.approx(2 * PSI * scored / flops)
    # 6,144 responses over 8 engines of 256: 3 waves of 2,048 decode steps, each reading the weights and
    # the batch's KV at 2.04 TB/s, or computing 2Ψ FLOPs per sequence: at batch 256 the FLOPs are slower.
    wave_bytes = 2048 * 2 * PSI + 256 * 57_344 * (2048 * 1024 + 2048 * 2049 / 2)
    wave_flops = 2 * PSI * 256 * 2048
    assert wave_flops / flops > wave_bytes / 2.04e12
    assert t["sampling"] == pytest.approx(3 * wave_flops / flops)

"""`selfsteer plan` with model.lora: every term of a LoRA trainer rank, engine and sync against hand
arithmetic for the shipped Qwen2-7B and Llama-3-70B LoRA configs, and the 70B full fine-tuning refusal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from selfsteer.cli.main import main
from selfsteer.config.schema import load_config
from selfsteer.plan import lora as lm
from selfsteer.plan import memory as gm
from selfsteer.plan.planner import attach_memory, requirements

REPO = Path(__file__).resolve().parents[2]
GIB = 1024 ** 3
NODE = ["--nodes", "1", "--gpus-per-node", "8", "--gpu", "h100-80gb", "--cpus-per-node", "64"]
QWEN = gm.ModelShape.from_config(gm.BUILTIN["Qwen2-7B"], "qwen", "test")
PSI_QWEN = 7_615_616_512  # tests/plan/test_plan.py works it out
# Qwen2-7B at rank 64, per layer r(d_in + d_out): q, o 64*(3584+3584); k, v 64*(3584+4*128);
# gate, up 64*(3584+18944); down 64*(18944+3584).
ADAPTER_QWEN = 28 * (2 * 64 * 7168 + 2 * 64 * 4096 + 3 * 64 * 22528)
LLAMA = gm.model_shape("/models/Meta-Llama-3-70B-Instruct")
PSI_LLAMA = 70_553_706_496
# Llama-3-70B at rank 16: q, o 16*(8192+8192); k, v 16*(8192+8*128); gate, up, down 16*(8192+28672).
ADAPTER_LLAMA = 80 * (2 * 16 * 16384 + 2 * 16 * 9216 + 3 * 16 * 36864)


def _bundles(config: str, *overrides: str, gib: float = 79.11):
    cfg = load_config(REPO / config, list(overrides))
    bundles = requirements(cfg)
    attach_memory(cfg, bundles, gm.model_shape(cfg.model.policy), gib * GIB)
    return cfg, {b.label: b for b in bundles}


def test_plan_sizes_the_projections_training_adapts_and_vllm_slot_ranks():
    from selfsteer.engines.vllm_engine import _vllm_lora_rank
    from selfsteer.training.lora import ARCH_TARGETS

    assert all(tuple(ARCH_TARGETS[arch]) == lm.PROJECTIONS for arch in ("llama", "qwen2"))
    assert [lm.vllm_slot_rank(r) for r in (1, 2, 16, 17, 64, 300, 600)] == \
        [_vllm_lora_rank(r) for r in (1, 2, 16, 17, 64, 300, 600)] == [1, 8, 16, 32, 64, 320, 600]
    assert ADAPTER_QWEN == 161_480_704 and ADAPTER_LLAMA == 207_093_760
    assert lm.adapter_params(QWEN, 64, lm.PROJECTIONS) == ADAPTER_QWEN
    assert lm.adapter_params(LLAMA, 16, lm.PROJECTIONS) == ADAPTER_LLAMA
    assert lm.adapter_params(QWEN, 8, ("q_proj", "v_proj")) == 28 * 8 * (7168 + 4096)
    with pytest.raises(ValueError, match=r"not \['lm_head'\]"):
        lm.targets(load_config(REPO / "configs/qwen2_7b_instruct_lora.yaml",
                               ["model.lora.target_modules=[q_proj,lm_head]"]).model.lora)


def test_qwen2_7b_lora_zero2_trainer_rank_term_by_term():
    cfg, b = _bundles("configs/qwen2_7b_instruct_lora.yaml")
    psi, a, n = PSI_QWEN, ADAPTER_QWEN, 7
    tokens = 3 * 1024 + 6 * 2048  # SSO v1 packed: three 1024-token contexts once, six 2048-token responses
    rank0 = b["trainer rank 0"].memory
    expected = {
        "frozen base": 2 * psi,  # ZeRO-2 keeps the bf16 base whole on every rank
        "adapter": 2 * a,  # bf16 (DeepSpeed casts the adapter), replicated below stage 3
        "adapter gradients": 2 * a / n, "adapter optimizer": 12 * a / n,  # fp32 master + m + v, partitioned
        "zero buffers": 2 * 5e8 * 2,  # reduce + all-gather buckets of 5e8 bf16 elements, allocated in full
        # Checkpointed layer inputs, one layer recomputed, and that layer's 7 rank-64 adapter intermediates.
        "activations": 28 * 3584 * 2 * tokens + (6 * 3584 + 2 * 512 + 4 * 18944) * 2 * tokens + 7 * 64 * 2 * tokens,
        "logits": tokens * 152_064 * 4 + 512 * 152_064 * 12,  # as the full fine-tuning plan: the base's head
        "attention mask": 3 * 5120 * 5120 * 2,
        # Two 256 MiB send slots: the adapter (308 MiB in bf16) is larger than one bucket, its widest
        # tensor (64 x 18944) smaller.
        "sync buffers": 2 * 256 * 2 ** 20,
        "CUDA context": 0.5 * GIB,
    }
    assert rank0 == pytest.approx(expected)
    assert "sync buffers" not in b["trainer rank 1"].memory
    # The reference (adapter off) scores 8 rows a forward on the rank: 4 contexts of 1024 and 8
    # responses of 2048 tokens, no grad: one layer's activations, bf16 logits and a chunk, its mask.
    scoring_tokens = 4 * 1024 + 8 * 2048
    scoring = ((6 * 3584 + 2 * 512 + 4 * 18944) * 2 * scoring_tokens + scoring_tokens * 152_064 * 2
               + 512 * 152_064 * 12 + 8 * 3072 * 3072 * 2)
    training = expected["activations"] + expected["logits"] + expected["attention mask"]
    assert scoring < training  # so no excess term: training's forward is the rank's peak
    assert f"adapter off: {scoring / GIB:.2f} GiB" in b["trainer rank 0"].note
    assert f"training's forward {training / GIB:.2f}" in b["trainer rank 0"].note
    assert "reference" not in {x.role for x in b.values()}  # adapter_off: no reference actor, no model copy
    engine = b["rollout engine 0"]
    # vLLM's one LoRA slot at max_lora_rank 64 over every projection, in bf16, inside its 0.9 share.
    slot = 2 * ADAPTER_QWEN
    kv = 0.9 * 79.11 * GIB - 2 * psi - slot - 2 * GIB
    assert engine.memory["receive buffers"] == 2 * 256 * 2 ** 20
    assert f"LoRA slot {slot / GIB:.2f} + reserve 2.00 + KV cache {kv / GIB:.2f}" in engine.note


@pytest.mark.parametrize("overrides, states", [
    # ZeRO-3 partitions the frozen base too, gathers up to 1e9 of its parameters at a time, and allocates
    # its 5e8-element gradient reduce bucket in full at start, however small the adapter.
    (["trainer.zero_stage=3"], {"frozen base": 2 * PSI_QWEN / 7, "adapter": 2 * ADAPTER_QWEN / 7,
                                "adapter gradients": 2 * ADAPTER_QWEN / 7, "adapter optimizer": 12 * ADAPTER_QWEN / 7,
                                "zero buffers": 1e9 * 2 + 5e8 * 2}),
    (["trainer.zero_stage=0"], {"frozen base": 2 * PSI_QWEN, "adapter": 2 * ADAPTER_QWEN,
                                "adapter gradients": 2 * ADAPTER_QWEN, "adapter optimizer": 12 * ADAPTER_QWEN}),
    # The torch backend: peft's float32 adapter, its gradients, AdamW m + v and one flat all-reduce copy.
    (["trainer.backend=torch"], {"frozen base": 2 * PSI_QWEN, "adapter": 4 * ADAPTER_QWEN,
                                 "adapter gradients": 4 * ADAPTER_QWEN, "adapter optimizer": 8 * ADAPTER_QWEN,
                                 "all-reduce buffer": 4 * ADAPTER_QWEN}),
])
def test_lora_states_per_backend_and_stage(overrides, states):
    _, b = _bundles("configs/qwen2_7b_instruct_lora.yaml", *overrides)
    memory = b["trainer rank 1"].memory
    assert {k: v for k, v in memory.items() if k in states or k in ("zero buffers", "all-reduce buffer")} == \
        pytest.approx(states)


def test_reference_scoring_above_training_is_counted_once():
    """Many reference rows a forward outgrow training's forward: the rank's peak is the larger, once."""
    _, b = _bundles("configs/qwen2_7b_instruct_lora.yaml", "reference.micro_batch_size=64")
    memory = b["trainer rank 1"].memory
    training = memory["activations"] + memory["logits"] + memory["attention mask"]
    scoring_tokens = 32 * 1024 + 64 * 2048
    scoring = ((6 * 3584 + 2 * 512 + 4 * 18944) * 2 * scoring_tokens + scoring_tokens * 152_064 * 2
               + 512 * 152_064 * 12 + 64 * 3072 * 3072 * 2)
    assert memory["reference scoring excess"] == pytest.approx(scoring - training)


def test_lora_round_time_trains_at_4_psi_and_scores_on_the_trainer_ranks():
    from selfsteer.plan import timing
    from selfsteer.plan.reference import reference_gpus as _reference_gpus
    from selfsteer.plan.workload import card, work

    lora = load_config(REPO / "configs/qwen2_7b_instruct_lora.yaml")
    full = load_config(REPO / "configs/qwen2_7b_instruct_lora.yaml", ["model.lora.enabled=false",
                                                                     "reference.mode=actor"])
    assert (_reference_gpus(lora), _reference_gpus(full)) == (7, 1)
    kw = dict(train_gpus=7, engines=1, kv_sequences=300)
    t_lora = timing.round_seconds(lora, QWEN, card("h100-80gb"), work(lora), reference_gpus=7, **kw)
    t_full = timing.round_seconds(full, QWEN, card("h100-80gb"), work(full), reference_gpus=1, **kw)
    # Forward 2Ψ, backward 2Ψ (activation gradients only: the base is frozen), recompute 2Ψ: 6 of 8.
    assert t_lora["training"] / t_full["training"] == pytest.approx(6 / 8)
    assert t_lora["reference"] == pytest.approx(t_full["reference"] / 7)
    assert t_lora["sampling"] == t_full["sampling"]


def test_llama3_70b_lora_fits_one_8_gpu_node(capsys):
    rc = main(["plan", "configs/llama3_70b_lora.yaml", *NODE, "--host-memory-gib", "1024"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "GPUs requested: 8 of 8" in out and out.rstrip().endswith("within its timeout")
    psi, a, n = PSI_LLAMA, ADAPTER_LLAMA, 4
    assert f"adapter {a:,} parameters (0.29% of the model), 395.0 MiB a sync" in out
    tokens = 3 * 1024 + 6 * 1024
    rank = (2 * psi / n + (2 + 2 + 12) * a / n + 2e9 + 1e9  # ZeRO-3: base, adapter, grads, optimizer; live gather, reduce bucket
            + 80 * 8192 * 2 * tokens + (6 * 8192 + 2 * 1024 + 4 * 28672) * 2 * tokens + 7 * 16 * 2 * tokens
            + tokens * 128_256 * 4 + 512 * 128_256 * 12 + 3 * 3072 * 3072 * 2 + 0.5 * GIB)
    assert re.search(rf"trainer ranks 1-3 .* {rank / GIB:.2f}  frozen base {2 * psi / n / GIB:.2f},", out)
    assert f"trainer rank 0         CPU 8, GPU 1     node0 gpu0            {(rank + 2 * 256 * 2 ** 20) / GIB:.2f}" in out
    # The TP-4 engine: a quarter of the base per GPU, the rank-16 slot (unsharded: an upper bound).
    slot = 2 * a
    kv = 0.9 * 79.11 * GIB - 2 * psi / 4 - slot - 2 * GIB
    assert f"weights {2 * psi / 4 / GIB:.2f} + LoRA slot {slot / GIB:.2f} + reserve 2.00 + KV cache {kv / GIB:.2f}" in out
    # Host: 4 trainer ranks (process + shard + the largest tensor), 4 vLLM workers (process + one tensor
    # in flight: they keep no copy).
    host = 4 * (2 * GIB + 2 * psi / 4 + 128_256 * 8192 * 2) + 4 * (2 * GIB + 128_256 * 8192 * 2)
    assert f"host RAM per node at load: up to {host / GIB:.0f} GiB" in out
    assert "reference              " not in out  # no reference bundle at all


def test_llama3_70b_full_fine_tuning_is_refused_on_the_same_node(capsys):
    """The shipped full fine-tuning config asks for 56 GPUs; on the LoRA config's own layout with LoRA
    off, each ZeRO-3 rank needs 16Ψ/4 of states and the reference a GPU of its own for 131 GiB."""
    assert main(["plan", "configs/llama3_70b_8node.yaml", *NODE, "--host-memory-gib", "1024"]) == 2
    out = capsys.readouterr().out.split("the same run with placement=colocated")[0]
    assert "GPUs requested: 56 of 8" in out  # 32 trainer ranks (holding the reference too), 3 x TP-8 engines
    assert "DOES NOT FIT: trainer rank 8: needs {CPU 4, GPU 1} on one node" in out
    assert main(["plan", "configs/llama3_70b_lora.yaml", "model.lora.enabled=false", "reference.mode=actor",
                 "reference.num_gpus=1", *NODE, "--host-memory-gib", "1024"]) == 2
    out = capsys.readouterr().out.split("the same run with placement=colocated")[0]
    tokens = 3 * 1024 + 6 * 1024
    rank1 = (16 * PSI_LLAMA / 4 + 2e9 + 1e9 + 80 * 8192 * 2 * tokens + (6 * 8192 + 2 * 1024 + 4 * 28672) * 2 * tokens
             + tokens * 128_256 * 4 + 512 * 128_256 * 12 + 3 * 3072 * 3072 * 2 + 0.5 * GIB)
    assert f"DOES NOT FIT: trainer rank 1: needs {rank1 / GIB:.1f} GiB on node0 gpu1" in out
    assert "DOES NOT FIT: reference: needs {CPU 1, GPU 1} on one node" in out


def test_hf_engine_holds_the_float32_adapter_beside_its_base():
    _, b = _bundles("configs/qwen2_7b_instruct_lora.yaml", "rollout.backend=hf", "rollout.max_batch_size=8")
    memory = b["rollout engine 0"].memory
    assert memory["weights"] == 2 * PSI_QWEN and memory["adapter"] == 4 * ADAPTER_QWEN  # peft's autocast: fp32


@pytest.mark.parametrize("args", [["configs/llama3_70b_lora.yaml"], ["configs/qwen2_7b_instruct_lora.yaml"],
                                  ["configs/llama3_70b_lora.yaml", "model.lora.enabled=false", "reference.mode=actor",
                                   "reference.num_gpus=1"]])
def test_docs_show_the_lora_plans_as_they_print(args, capsys):
    """docs/guide/lora.md pastes these commands' output; it must stay what they print."""
    main(["plan", *args, *NODE, "--host-memory-gib", "1024"])
    out = capsys.readouterr().out.split("\nthe same run with placement=colocated")[0]
    assert out in (REPO / "docs/guide/lora.md").read_text()
    if args == ["configs/llama3_70b_lora.yaml"]:
        assert out in (REPO / "docs/guide/gpu-memory.md").read_text()

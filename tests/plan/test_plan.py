"""`selfsteer plan`: model sizes, ZeRO/activation/vLLM estimates against hand arithmetic for Qwen2-7B,
placement of bundles on nodes, the cluster check's message, and the shipped GPU configs' fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfsteer.plan import memory as gm
from selfsteer.cli.main import main
from selfsteer.config.schema import load_config
from selfsteer.plan.planner import Bundle, ClusterTooSmallError, Node, check_cluster, place, requirements

REPO = Path(__file__).resolve().parents[2]
GIB = 1024 ** 3
QWEN = gm.ModelShape.from_config(gm.BUILTIN["Qwen2-7B"], "qwen", "test")
# Qwen2-7B, per layer: q and o 2*3584*(28*128) = 25,690,112; k and v 2*3584*(4*128) = 3,670,016;
# q/k/v biases (28+2*4)*128 = 4,608; gate/up/down 3*3584*18944 = 203,685,888; two norms 2*3584 = 7,168.
LAYER = 25_690_112 + 3_670_016 + 4_608 + 203_685_888 + 7_168  # 233,057,792
PSI = 28 * LAYER + 2 * 152_064 * 3_584 + 3_584  # untied embedding and lm_head, final norm: 7,615,616,512


def test_qwen2_7b_parameter_count_is_the_published_one():
    assert LAYER == 233_057_792
    assert QWEN.params == PSI == 7_615_616_512


@pytest.mark.parametrize("stage, expected", [
    # bf16 weights 2Ψ, gradients 2Ψ, Adam fp32 master + m + v 12Ψ; N = 6 ranks.
    (0, {"weights": 2 * PSI, "gradients": 2 * PSI, "optimizer": 12 * PSI}),
    (1, {"weights": 2 * PSI, "gradients": 2 * PSI, "optimizer": 12 * PSI / 6, "zero buffers": 2 * 5e8 * 2}),
    (2, {"weights": 2 * PSI, "gradients": 2 * PSI / 6, "optimizer": 12 * PSI / 6, "zero buffers": 2 * 5e8 * 2}),
    (3, {"weights": 2 * PSI / 6, "gradients": 2 * PSI / 6, "optimizer": 12 * PSI / 6, "zero buffers": 1e9 * 2}),
])
def test_zero_states_per_rank(stage, expected):
    assert gm.zero_states(PSI, 2, stage, 6) == pytest.approx(expected)


def test_fp32_adam_has_no_master_copy():
    assert gm.zero_states(1000, 4, 0, 1) == {"weights": 4000, "gradients": 4000, "optimizer": 8000}


def test_trainer_estimate_of_the_one_node_qwen_config():
    cfg = load_config(REPO / "configs/qwen2_7b_instruct.yaml")
    rows, width = 6, 1024 + 2048  # SSO v1: six (response, context) rows per triple, micro-batch 1
    tokens = rows * width  # 18,432
    memory = gm.trainer_memory(QWEN, cfg.trainer, 2, rows=rows, width=width, packing=True)
    # Checkpointed layer inputs 28*3584*2 B per token; one layer recomputed: (6*3584 + 2*512 + 4*18944)*2 B.
    assert memory["activations"] == 28 * 3584 * 2 * tokens + 98_304 * 2 * tokens == 7_323_254_784
    assert memory["logits"] == tokens * 152_064 * (2 * 2 + 8) == 33_634_123_776  # bf16 logits + grad, fp32 copy + log-softmax
    assert memory["attention mask"] == 6 * 3072 * 3072 * 2
    total = 16 * PSI / 6 + 2e9 + 7_323_254_784 + 33_634_123_776 + 6 * 3072 * 3072 * 2
    assert sum(memory.values()) == pytest.approx(total)
    assert 58 * GIB < total < 60 * GIB  # ~59.0 GiB of an 80 GiB GPU


def test_vllm_budget_for_qwen2_7b():
    b = gm.vllm_budget(QWEN, 2, 80 * GIB, utilization=0.9, tp=1, max_model_len=32768, seq_len=3072)
    assert b.kv_bytes_per_token == 2 * 28 * 4 * 128 * 2 == 57_344
    kv = 0.9 * 80 * GIB - 2 * PSI - 2 * GIB  # 59,930,694,656 B
    assert b.kv_cache == pytest.approx(kv)
    assert b.tokens == int(kv // 57_344) == 1_045_108
    assert b.fits
    # TP 2 halves the weights and the kv heads per GPU; at 19 GiB the KV cache (0.9*19 - 14.2 - 2 GiB) holds < 32,768 tokens.
    assert gm.vllm_budget(QWEN, 2, 80 * GIB, utilization=0.9, tp=2, max_model_len=32768, seq_len=3072).kv_bytes_per_token == 28_672
    assert not gm.vllm_budget(QWEN, 2, 19 * GIB, utilization=0.9, tp=1, max_model_len=32768, seq_len=3072).fits


def test_model_shape_from_config_json_then_builtin_then_error(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**gm.BUILTIN["Llama-3.1-8B"], "num_hidden_layers": 2}))
    assert gm.model_shape(str(model)).layers == 2
    assert "config.json" in gm.model_shape(str(model)).source
    shape = gm.model_shape("/nowhere/Meta-Llama-3.1-8B-Instruct")
    assert shape.params == 8_030_261_248 and "built-in table for Llama-3.1-8B" in shape.source
    with pytest.raises(FileNotFoundError, match="no config.json"):
        gm.model_shape("/nowhere/Mistral-7B")


def test_place_whole_fractional_and_tensor_parallel_bundles():
    nodes = [Node("a", 8, 2), Node("b", 8, 2)]
    bundles = [Bundle("t", "t0", 1, 1), Bundle("r", "r0", 1, 0.5), Bundle("r", "r1", 1, 0.5), Bundle("x", "x", 1, 1)]
    p = place(bundles, nodes)
    assert p.problems == [] and p.where == {0: (0, [0]), 1: (0, [1]), 2: (0, [1]), 3: (1, [0])}
    # A TP-4 engine needs four GPUs on one node: two nodes of two do not do.
    p = place([Bundle("rollout", "rollout engine 0", 1, 4)], nodes)
    assert p.problems == [("rollout engine 0", "needs {CPU 1, GPU 4} on one node, and no node has that left")]
    assert place([Bundle("c", "c", 3, 0)] * 2, [Node("a", 5, 0)]).problems[0][0] == "c"  # 3 + 3 CPUs > 5


def test_check_cluster_names_what_is_needed_and_what_is_there():
    cfg = load_config(REPO / "configs/qwen2_7b_instruct.yaml")
    check_cluster(cfg, [Node("10.0.0.1", 64, 8)])
    with pytest.raises(ClusterTooSmallError) as err:
        check_cluster(cfg, [Node("10.0.0.1", 64, 4)])
    text = str(err.value)
    assert "trainer rank 4 needs {CPU 4, GPU 1} on one node" in text
    assert "trainer 6 x {CPU 4, GPU 1}; rollout 1 x {CPU 4, GPU 1}; reference 1 x {CPU 4, GPU 1}" in text
    assert "GPU 8 in all" in text and "the cluster has 10.0.0.1: CPU 64, GPU 4" in text


def test_requirements_count_tensor_parallel_gpus_and_a_principle_model():
    cfg = load_config(REPO / "configs/qwen2_7b_instruct_2node.yaml",
                      ["rollout.tensor_parallel_size=2", "principles.mode=llm", "principles.llm.source=model",
                       "principles.llm.model_path=/m/Qwen2-7B-Instruct", "principles.llm.num_gpus=1"])
    by_role = {}
    for b in requirements(cfg):
        by_role.setdefault(b.role, []).append(b.gpus)
    assert by_role == {"trainer": [1] * 8, "rollout": [2] * 7, "reference": [1], "principles": [1]}


@pytest.mark.parametrize("config, nodes", [("qwen2_7b_instruct", 1), ("llama3_1_8b_sft", 1),
                                           ("qwen2_7b_instruct_2node", 2), ("llama3_1_8b_sft_2node", 2)])
def test_shipped_gpu_configs_fit_their_nodes(config, nodes, capsys):
    rc = main(["plan", f"configs/{config}.yaml", "--nodes", str(nodes), "--gpus-per-node", "8",
               "--gpu-memory-gib", "80", "--cpus-per-node", "64"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"GPUs requested: {8 * nodes} of {8 * nodes}" in out and "fits:" in out


def test_plan_exit_2_names_the_role(capsys):
    assert main(["plan", "configs/qwen2_7b_instruct_2node.yaml", "--nodes", "1"]) == 2
    assert "DOES NOT FIT: rollout engine 0: needs {CPU 4, GPU 1}" in capsys.readouterr().out
    # ZeRO-0 keeps all 16Ψ = 113 GiB of model states on every rank.
    assert main(["plan", "configs/qwen2_7b_instruct.yaml", "trainer.zero_stage=0"]) == 2
    out = capsys.readouterr().out
    assert "DOES NOT FIT: trainer rank 0: needs 1" in out and "GiB on node0 gpu0" in out
    assert main(["plan", "configs/llama3_1_8b_sft.yaml", "--gpu-memory-gib", "24"]) == 2
    assert "vLLM's KV cache holds" in capsys.readouterr().out


def test_plan_of_a_cpu_config_fits_and_says_so(capsys):
    assert main(["plan", "configs/tiny_cpu.yaml", "--gpus-per-node", "0", "--cpus-per-node", "2"]) == 0
    out = capsys.readouterr().out
    assert "CPU only" in out and "sizes from model.toy settings" in out


def test_start_roles_fails_at_once_when_the_local_ray_cannot_place_the_config(ray_local):
    """The in-process Ray has 2 CPUs; 2 trainer ranks x 0.5 + 8 engines x 1 CPU cannot be placed."""
    import time

    from ray.util import placement_group_table

    from selfsteer.actors.roles import start_roles

    cfg = load_config(REPO / "configs/tiny_cpu.yaml", ["rollout.num_engines=8", "rollout.num_cpus=1"])
    assert cfg.ray.startup_timeout_s == 1800  # what a start-up without the check would wait
    groups = len(placement_group_table())
    start = time.monotonic()
    with pytest.raises(ClusterTooSmallError, match=r"rollout engine 1 needs \{CPU 1\} on one node.*"
                                                   r"the cluster has \S+: CPU 2, GPU 0"):
        start_roles(cfg, None)  # the check comes before the inputs are touched
    assert time.monotonic() - start < 10
    assert len(placement_group_table()) == groups  # no trainer placement group was even asked for


def test_docs_show_the_plan_as_it_prints(capsys):
    """docs/guide/cluster.md ("GPU clusters") pastes this command's output; it must stay what the command prints."""
    assert main(["plan", "configs/qwen2_7b_instruct.yaml", "--nodes", "1", "--gpus-per-node", "8",
                 "--gpu-memory-gib", "80", "--cpus-per-node", "64"]) == 0
    assert capsys.readouterr().out in (REPO / "docs/guide/cluster.md").read_text()


@pytest.mark.slow
def test_selfsteer_run_exits_2_with_the_placement_message(tmp_path, toy_cache):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "selfsteer.cli.main", "run", "configs/tiny_cpu.yaml", "ray.num_cpus=1",
           "rollout.num_cpus=1", f"output_dir={tmp_path / 'run'}", f"model.cache_dir={toy_cache}", "tensorboard=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "rollout engine 0 needs {CPU 1} on one node" in proc.stderr
    assert "the cluster has" in proc.stderr and "CPU 1, GPU 0" in proc.stderr


def test_plan_counts_the_rows_and_generations_self_contrast_really_uses(capsys):
    """k+1 = 17 trainer rows per example and n_samples = 32 responses per prompt (the paper's
    defaults), from the method's spec, which the round and the trainer read too."""
    from selfsteer.algorithms.registry import method
    from selfsteer.plan.timing import round_seconds

    assert main(["plan", "configs/qwen2_7b_instruct.yaml", "algo=self_contrast"]) == 2  # 17 rows do not fit
    out = capsys.readouterr().out
    assert "micro-batch 1 x 17 rows of 1024+2048 tokens" in out
    # Logits of 17 rows x 3072 tokens: 52,224 tokens x vocab 152,064 x (2*2 + 8) B = 95,296,684,032 B = 88.75 GiB.
    assert "logits 88.75" in out and "placement=colocated" not in out  # self_contrast has no colocated variant
    # Sampling: 2048 prompts x 32 / 1 engine / batch 256 = 256 waves x 2048 steps x 2Ψ B / 2 TB/s = 3,993 s.
    assert "sampling 67 min" in out
    cfg = load_config(REPO / "configs/qwen2_7b_instruct.yaml", ["algo=self_contrast"])
    spec = method("self_contrast")
    assert spec.keys(cfg) == ["chosen"] + [f"neg_{j}" for j in range(16)] and spec.generations(cfg) == 32
    t = round_seconds(cfg, QWEN, train_gpus=6, engines=1, reference_gpus=1, rows=spec.rows(cfg))
    assert t["sampling"] == pytest.approx(256 * 2048 * 2 * PSI / 2e12)
    sso = load_config(REPO / "configs/qwen2_7b_instruct.yaml")
    assert round_seconds(sso, QWEN, train_gpus=6, engines=1, reference_gpus=1, rows=6)["sampling"] == \
        pytest.approx(24 * 2048 * 2 * PSI / 2e12)  # SSO: 2048 x 3 / 256 = 24 waves


@pytest.mark.parametrize("overrides, generations, rows", [
    (["algo=sso", "loss.variant=v1"], 3, 6), (["algo=sso", "loss.variant=v2"], 3, 4), (["algo=dpo"], 3, 2),
    (["algo=self_contrast", "self_contrast.k=2", "self_contrast.n_samples=8"], 8, 3), (["algo=sepo"], 2, 2),
    (["algo=sipo", "sipo.rewrite=false"], 4, 2), (["algo=sipo", "sipo.rewrite=true"], 12, 2)])  # 4 weights
def test_each_method_spec_counts_what_its_round_samples_and_trains(overrides, generations, rows):
    from selfsteer.algorithms.registry import method

    cfg = load_config(REPO / ("configs/sipo_tiny_cpu.yaml" if "algo=sipo" in overrides[0] else "configs/tiny_cpu.yaml"),
                      overrides)
    spec = method(cfg.algo)
    assert (spec.generations(cfg), spec.rows(cfg)) == (generations, rows)

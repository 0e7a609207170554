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
    # Stage 3: the 1e9-element live-parameter limit, and the 5e8-element gradient reduce bucket that
    # DeepSpeed allocates in full at start (stage3.py: torch.empty(reduce_bucket_size)).
    (3, {"weights": 2 * PSI / 6, "gradients": 2 * PSI / 6, "optimizer": 12 * PSI / 6, "zero buffers": 1e9 * 2 + 5e8 * 2}),
])
def test_zero_states_per_rank(stage, expected):
    assert gm.zero_states(PSI, 2, stage, 6) == pytest.approx(expected)


def test_fp32_adam_has_no_master_copy():
    assert gm.zero_states(1000, 4, 0, 1) == {"weights": 4000, "gradients": 4000, "optimizer": 8000}


def test_trainer_estimate_of_the_one_node_qwen_config():
    cfg = load_config(REPO / "configs/qwen2_7b_instruct.yaml")
    # SSO v1, micro-batch 1, packed: the three contexts once (3 x 1024) and six 2048-token responses.
    tokens = 3 * 1024 + 6 * 2048  # 15,360
    memory = gm.trainer_memory(QWEN, cfg.trainer, 2, tokens=tokens, mask_bytes=3 * 5120 * 5120 * 2)
    # Checkpointed layer inputs 28*3584*2 B per token; one layer recomputed: (6*3584 + 2*512 + 4*18944)*2 B.
    assert memory["activations"] == 28 * 3584 * 2 * tokens + 98_304 * 2 * tokens == 6_102_712_320
    # As logprobs computes them through a DeepSpeed engine: bf16 logits kept for backward and their
    # one gradient tensor (T*V*2*2), plus one 512-token chunk's float32 work (512*V*(2*2 + 8)).
    assert memory["logits"] == tokens * 152_064 * 4 + 512 * 152_064 * 12 == 10_277_093_376  # 9.57 GiB
    assert memory["CUDA context"] == 0.5 * GIB
    total = 16 * PSI / 6 + 2e9 + 1e9 + 6_102_712_320 + 10_277_093_376 + 3 * 5120 * 5120 * 2 + 0.5 * GIB
    assert sum(memory.values()) == pytest.approx(total)
    assert 37 * GIB < total < 38 * GIB  # the old estimate (full fp32 logits of unpacked rows) said 59 GiB


def test_logits_as_the_code_computes_them_for_trainer_and_reference():
    from selfsteer.algorithms.logprobs import DEFAULT_CHUNK

    assert gm.LOGPROB_CHUNK == DEFAULT_CHUNK
    # The reference applies the lm_head per chunk: hidden states of 8 padded rows + one chunk's logits.
    tokens = 8 * 3072
    ref = gm.forward_memory(QWEN, 2, tokens=tokens)
    assert ref["logits"] == tokens * 3584 * 2 + 512 * 152_064 * (2 + 8)  # 0.89 GiB, not 34.8
    assert 0.8 * GIB < ref["logits"] < 0.9 * GIB
    # The torch backend splits the head in training too: hidden states + one chunk with its gradient.
    assert gm.logits_bytes(QWEN, 2, 15_360, split_head=True, train=True) == 15_360 * 3584 * 2 + 512 * 152_064 * 12


def test_method_rows_follow_the_config():
    from selfsteer.plan.workload import work

    sso = work(load_config(REPO / "configs/qwen2_7b_instruct.yaml"))
    assert (sso.responses_per_prompt, sso.rows, sso.contexts, sso.packed) == (3, 6, 3, True)
    assert work(load_config(REPO / "configs/qwen2_7b_instruct.yaml", ["loss.variant=v2"])).rows == 4
    sc = work(load_config(None, ["algo=self_contrast", "self_contrast.n_samples=8", "self_contrast.k=5"]))
    assert (sc.responses_per_prompt, sc.rows, sc.contexts) == (8, 6, 1)  # k + 1 rows: y* and k negatives
    assert sc.forward_tokens(2, 100, 50) == 2 * (100 + 6 * 50)
    sepo = work(load_config(None, ["algo=sepo"]))
    assert not sepo.packed and sepo.forward_tokens(1, 100, 50) == 2 * 150  # token masks: padded rows


def test_plan_counts_the_rows_and_generations_self_contrast_really_uses(capsys):
    """k+1 = 17 trainer rows per example and n_samples = 32 responses per prompt (the paper's defaults),
    from the method's registry spec, which the round and the trainer read too."""
    from selfsteer.algorithms.registry import method
    from selfsteer.plan.timing import round_seconds
    from selfsteer.plan.workload import card, work

    # One engine: 2048 x 32 samples take ~118 min, over the 5400 s call timeout (the shipped two: ~59).
    assert main(["plan", "configs/qwen2_7b_instruct.yaml", "algo=self_contrast", "rollout.num_engines=1"]) == 2
    out = capsys.readouterr().out
    assert "DOES NOT FIT: sampling phase" in out
    assert "micro-batch 1 x 17 rows (1 context(s), packed)" in out and "32 samples per prompt" in out
    assert "placement=colocated" not in out  # self_contrast has no colocated variant
    cfg = load_config(REPO / "configs/qwen2_7b_instruct.yaml", ["algo=self_contrast"])
    sso = load_config(REPO / "configs/qwen2_7b_instruct.yaml")
    spec = method("self_contrast")
    assert spec.keys(cfg) == ["chosen"] + [f"neg_{j}" for j in range(16)] and spec.generations(cfg) == 32
    sc, v1 = work(cfg), work(sso)
    assert sc.forward_tokens(1, 1024, 2048) == 1024 + 17 * 2048  # the context once, 17 responses
    assert v1.forward_tokens(1, 1024, 2048) == 3 * 1024 + 6 * 2048  # x, x+, x-; six responses
    kw = dict(train_gpus=6, engines=1, reference_gpus=1, kv_sequences=335)
    t, s = round_seconds(cfg, QWEN, card(None), sc, **kw), round_seconds(sso, QWEN, card(None), v1, **kw)
    # 2048 prompts x 32 samples on one engine at batch 256: 256 waves; SSO's 3 samples: 24 waves of the same cost.
    assert t["sampling"] / s["sampling"] == pytest.approx(256 / 24)
    assert t["training"] / s["training"] == pytest.approx((1024 + 17 * 2048) / (3 * 1024 + 6 * 2048))


def test_sync_buckets_hold_the_largest_tensor():
    # Qwen2-7B's embedding is 152,064 x 3,584 x 2 B = 1.02 GiB: a 256 MiB bucket setting still sends it whole.
    assert gm.largest_tensor(QWEN, 2) == 152_064 * 3584 * 2
    assert gm.bucket_bytes(QWEN, 2, 256) == 152_064 * 3584 * 2
    assert gm.bucket_bytes(QWEN, 2, 2048) == 2048 * 2 ** 20
    # A bucket never splits a fused layer: gate/up is 2 x 18,944 x 3,584 x 2 B (259 MiB), q/k/v
    # (28 + 2 x 4 heads) x 128 x 3,584 x 2 B; gate/up is larger, and smaller than the embedding.
    assert gm.largest_fused(QWEN, 2) == 2 * 18_944 * 3584 * 2 > 36 * 128 * 3584 * 2
    untied_small_vocab = gm.ModelShape(**{**QWEN.__dict__, "vocab": 1000})
    assert gm.bucket_bytes(untied_small_vocab, 2, 256) == 2 * 18_944 * 3584 * 2


def test_host_ram_from_the_loading_path():
    cfg = load_config(REPO / "configs/qwen2_7b_instruct_colocated.yaml")
    # ZeRO-3 over 8, sliced loading: the rank's shard and the module being built (at most the
    # 1.02 GiB embedding), not 14.2 GiB.
    assert gm.host_trainer(QWEN, 2, cfg.trainer) == 2 * GIB + 2 * PSI / 8 + 152_064 * 3584 * 2
    ddp = load_config(REPO / "configs/qwen2_7b_instruct_colocated.yaml", ["trainer.zero_stage=2"]).trainer
    assert gm.host_trainer(QWEN, 2, ddp) == 2 * GIB + 2 * PSI
    # Each TP worker streams the checkpoint to its GPU a tensor at a time and keeps no copy.
    assert gm.host_engine(QWEN, 2, 4, vllm=True) == 4 * (2 * GIB + 152_064 * 3584 * 2)


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
    assert "trainer 6 x {CPU 4, GPU 1}; rollout 2 x {CPU 4, GPU 1}; principles 1 x {CPU 0}" in text  # no reference GPU
    assert "GPU 8 in all" in text and "the cluster has 10.0.0.1: CPU 64, GPU 4" in text


def test_requirements_count_tensor_parallel_gpus_and_a_principle_model():
    cfg = load_config(REPO / "configs/qwen2_7b_instruct_2node.yaml",
                      ["rollout.tensor_parallel_size=2", "principles.mode=llm", "principles.llm.source=model",
                       "principles.llm.model_path=/m/Qwen2-7B-Instruct", "principles.llm.num_gpus=1"])
    by_role = {}
    for b in requirements(cfg):
        by_role.setdefault(b.role, []).append(b.gpus)
    assert by_role == {"trainer": [1] * 8, "rollout": [2] * 8, "principles": [1]}  # the ranks hold the reference
    actor = load_config(REPO / "configs/qwen2_7b_instruct_2node.yaml", ["reference.mode=actor", "reference.num_gpus=1"])
    assert [b.gpus for b in requirements(actor) if b.role == "reference"] == [1]


@pytest.mark.parametrize("config, nodes", [("qwen2_7b_instruct", 1), ("llama3_1_8b_sft", 1),
                                           ("qwen2_7b_instruct_2node", 2), ("llama3_1_8b_sft_2node", 2)])
def test_shipped_gpu_configs_fit_their_nodes(config, nodes, capsys):
    rc = main(["plan", f"configs/{config}.yaml", "--nodes", str(nodes), "--gpus-per-node", "8",
               "--gpu", "h100-80gb", "--cpus-per-node", "64"])
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


@pytest.mark.parametrize("args", [["configs/qwen2_7b_instruct.yaml", "--nodes", "1"],
                                  ["configs/qwen2_7b_instruct_colocated.yaml", "--nodes", "1"],
                                  ["configs/llama3_70b_8node.yaml", "--nodes", "8", "--host-memory-gib", "2048"]])
def test_docs_show_the_plan_as_it_prints(args, capsys):
    """docs/guide/gpu-memory.md (and the cluster guide, for the first) paste these commands' output."""
    main(["plan", *args, "--gpus-per-node", "8", "--gpu", "h100-80gb", "--cpus-per-node", "64"])
    out = capsys.readouterr().out
    assert out in (REPO / "docs/guide/gpu-memory.md").read_text()
    # The README's table row for this config: host RAM and phase times as the plan prints them.
    row = next(line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith(f"| `{Path(args[0]).name}`"))
    layout = out.split("the same run with placement=colocated")[0]
    assert f"{layout.split('host RAM per node at load: up to ')[1].split()[0]} GiB" in row
    timing = next(line for line in layout.splitlines() if line.startswith("estimated GPU time per round"))
    times = [timing.split(f" {phase} ")[1].split(" min")[0] for phase in ("sampling", "reference", "training")]
    assert " / ".join(times) + " min" in row
    if args[0] == "configs/qwen2_7b_instruct.yaml":
        assert out in (REPO / "docs/guide/cluster.md").read_text()


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


def test_70b_config_plans_as_the_docs_say(capsys):
    """Llama-3-70B on 8 x 8 H100s: every term counted. Its reference is a 1/32 share on each trainer rank
    (reference.mode=trainer); on one GPU of its own (mode=actor) it cannot hold 131 GiB."""
    shape = gm.model_shape("/models/Meta-Llama-3-70B-Instruct")
    # Per layer: q, o 2*8192*8192; k, v 2*8192*1024; MLP 3*8192*28672; two norms; no biases.
    layer = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    assert shape.params == 80 * layer + 2 * 128_256 * 8192 + 8192 == 70_553_706_496
    rc = main(["plan", "configs/llama3_70b_8node.yaml", "--nodes", "8", "--gpu", "h100-80gb",
               "--host-memory-gib", "2048"])
    out = capsys.readouterr().out
    assert rc == 0
    separate = out.split("the same run with placement=colocated")[0]
    assert "DOES NOT FIT" not in separate  # trainer ranks, engines, host RAM and timeouts all fit
    psi = shape.params
    # Trainer rank 1, ZeRO-3 over 32: 16Ψ/32 + 1e9*2 live buffer + 5e8*2 reduce bucket + activations + logits + mask + context.
    tokens = 3 * 1024 + 6 * 1024
    # + the frozen reference's 1/32 share, 2Ψ/32 (its scoring forward needs less than training's).
    rank = (16 * psi / 32 + 2e9 + 1e9 + 80 * 8192 * 2 * tokens + (6 * 8192 + 2 * 1024 + 4 * 28672) * 2 * tokens
            + tokens * 128_256 * 4 + 512 * 128_256 * 12 + 3 * 3072 * 3072 * 2 + 0.5 * GIB + 2 * psi / 32)
    assert "trainer ranks 1-31" in separate and f"{rank / GIB:.2f}" in separate
    # An engine node: 8 TP workers, each its process and one tensor in flight (the 2 GB embedding).
    assert f"node4 {8 * (128_256 * 8192 * 2 + 2 * GIB) / GIB:.0f}" in separate
    assert main(["plan", "configs/llama3_70b_8node.yaml", "reference.mode=actor", "reference.num_gpus=1", "--nodes",
                 "8", "--gpu", "h100-80gb", "--host-memory-gib", "2048"]) == 2
    actor = capsys.readouterr().out.split("the same run with placement=colocated")[0]
    assert "DOES NOT FIT: reference: needs 136.6 GiB on node7 gpu0" in actor and actor.count("DOES NOT FIT") == 1
    colocated = out.split("the same run with placement=colocated")[1]
    assert "KV cache: none (the share is" in colocated and "KV cache -" not in out  # never a negative budget



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

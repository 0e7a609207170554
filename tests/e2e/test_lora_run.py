"""End to end: `selfsteer run` SSO with a LoRA policy on the toy model (reference.mode=adapter_off, so no
reference actor), then `--resume` for one more round, and `selfsteer export --merge` of its last checkpoint;
two rounds of DPO, Self-Contrast and SePO with LoRA (SIPO refuses LoRA at config load: tests/config)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_driver import _run_cli

pytestmark = pytest.mark.slow


def test_sso_with_lora_runs_resumes_and_merges(tmp_path, toy_cache):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from selfsteer.cli.main import main

    out = tmp_path / "run"
    args = ["configs/tiny_cpu.yaml", f"output_dir={out}", f"model.cache_dir={toy_cache}", "model.lora.enabled=true",
            "model.lora.rank=4", "reference.mode=adapter_off", "trainer.lr=0.01", "sync.verify=always"]
    proc = _run_cli(*args, "rounds=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2]
    assert all("train/loss" in m and m["sync/gbytes"] < 1e-3 for m in lines)  # the adapter, not the model
    ckpt = out / "checkpoints" / "round_0002"
    assert (ckpt / "adapter_config.json").is_file() and (ckpt / "selfsteer_base.json").is_file()
    assert not (ckpt / "model.safetensors").exists()

    proc = _run_cli("rounds=3", "--resume", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    third = load_file(out / "checkpoints" / "round_0003" / "adapter_model.safetensors")
    second = load_file(ckpt / "adapter_model.safetensors")
    assert set(third) == set(second) and any(not torch.equal(third[n], second[n]) for n in third)

    merged = tmp_path / "merged"
    assert main(["export", "--merge", str(out / "checkpoints" / "round_0003"), str(merged)]) == 0
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert not any("lora" in n for n in model.state_dict())


@pytest.mark.parametrize("algo", ["dpo", "self_contrast", "sepo"])
def test_every_lora_method_trains_the_adapter_only(tmp_path, toy_cache, algo):
    """DPO (RLCD pairs), Self-Contrast and SePO with a LoRA policy, two rounds: each checkpoint is an
    adapter only, the adapter moved every round, and the base it belongs to is the unchanged start model."""
    import torch
    from safetensors.torch import load_file

    from selfsteer.training.lora import BASE_FILE, file_hash

    out = tmp_path / "run"
    config = {"dpo": "configs/tiny_cpu.yaml"}.get(algo, f"configs/{algo}_tiny_cpu.yaml")
    proc = _run_cli(config, f"algo={algo}", "rounds=2", f"output_dir={out}", f"model.cache_dir={toy_cache}",
                    "model.lora.enabled=true", "model.lora.rank=4", "reference.mode=adapter_off", "trainer.lr=0.01",
                    "sync.verify=always", "tensorboard=false")
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2]
    assert all(m["sync/gbytes"] < 1e-3 for m in lines)  # the adapter travelled, not the model
    adapters = []
    for r in (1, 2):
        ckpt = out / "checkpoints" / f"round_{r:04d}"
        assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()
        tensors = load_file(ckpt / "adapter_model.safetensors")
        assert tensors and all(".lora_A." in n or ".lora_B." in n for n in tensors)  # no base tensor saved
        adapters.append(tensors)
        base = json.loads((ckpt / BASE_FILE).read_text())
        assert base["base_hash"] == file_hash(base["base_model"])  # the base files are what the adapter was trained on
    # B starts at zero (peft), so a nonzero B is a trained adapter; and round 2 moved it again.
    assert any(t.abs().max() > 0 for n, t in adapters[0].items() if ".lora_B." in n)
    assert any(not torch.equal(adapters[0][n], adapters[1][n]) for n in adapters[0])

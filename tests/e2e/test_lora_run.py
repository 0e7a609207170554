"""End to end: `selfsteer run` SSO with a LoRA policy on the toy model (reference.mode=adapter_off, so no
reference actor), then `--resume` for one more round, and `selfsteer export --merge` of its last checkpoint."""

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

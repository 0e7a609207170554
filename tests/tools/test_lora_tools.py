"""`selfsteer export --merge` and `selfsteer eval` on a LoRA adapter checkpoint (toy model)."""

from __future__ import annotations

import json

import torch

from selfsteer.cli.main import main
from tests.training.test_lora import _trained_policy


def _adapter_run(toy_model_path, tmp_path):
    """A run directory whose last checkpoint is an adapter checkpoint, as the trainer writes it."""
    from transformers import AutoTokenizer

    from selfsteer.training.lora import adapter_state, file_hash, save_adapter

    policy = _trained_policy(toy_model_path)
    ckpt = tmp_path / "run" / "checkpoints" / "round_0001"
    save_adapter(policy, ckpt, adapter_state(policy), toy_model_path, file_hash(toy_model_path))
    AutoTokenizer.from_pretrained(toy_model_path).save_pretrained(ckpt)
    return policy, ckpt


def test_export_merge_writes_the_merged_model(toy_model_path, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    policy, ckpt = _adapter_run(toy_model_path, tmp_path)
    out = tmp_path / "merged"
    assert main(["export", "--merge", str(ckpt), str(out)]) == 0
    merged = policy.merge_and_unload().state_dict()
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    assert set(exported) <= set(merged)
    for name, tensor in exported.items():
        assert torch.allclose(tensor, merged[name], atol=1e-6), name
    # Not an adapter checkpoint: one line, status 2, nothing written.
    assert main(["export", "--merge", str(out), str(tmp_path / "again")]) == 2
    assert "not an adapter checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_eval_accepts_an_adapter_checkpoint_and_its_run(toy_model_path, tmp_path):
    from selfsteer.tools.model_eval import resolve_checkpoint, run_eval

    policy, ckpt = _adapter_run(toy_model_path, tmp_path)
    assert resolve_checkpoint(tmp_path / "run") == ckpt
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["what is 3 plus 4 ?", "tell a story ."]))
    out = tmp_path / "eval.jsonl"
    merged_out = tmp_path / "merged"
    assert main(["export", "--merge", str(ckpt), str(merged_out)]) == 0
    run_eval(str(tmp_path / "run"), str(prompts), samples=0, max_new_tokens=8, scorer="none", out=str(out))
    run_eval(str(merged_out), str(prompts), samples=0, max_new_tokens=8, scorer="none", out=str(tmp_path / "m.jsonl"))
    got = [json.loads(line)["greedy"] for line in out.read_text().splitlines()]
    want = [json.loads(line)["greedy"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert got == want

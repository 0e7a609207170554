"""LoRA glue on the toy model, in process: what trains, what a sync carries, and that an engine given the
adapter tensors, an exported merge and the adapter-off reference all compute what they should."""

from __future__ import annotations

import json

import pytest
import torch

from selfsteer.config.schema import LoraConfig

PROMPTS = ["write a short list of fruit and tea .", "what is 3 plus 4 ?", "tell a short story about a cat ."]


def _trained_policy(path, lora=LoraConfig(enabled=True, rank=4, alpha=8.0)):
    """A peft policy whose adapter is far from zero (B = 0 at start would make every test trivial)."""
    from transformers import AutoModelForCausalLM

    from selfsteer.training.lora import adapter_names, wrap_policy

    torch.manual_seed(0)
    policy = wrap_policy(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), lora).eval()
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name in adapter_names(policy):
                p.normal_(0, 0.3)
    return policy


def _greedy(model, tok, prompts, n=12):
    from selfsteer.data.chat import encode_chat

    out = []
    for p in prompts:
        ids = torch.tensor([encode_chat(tok, p)])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


def test_only_the_adapter_trains_and_defaults_follow_the_architecture(toy_model_path):
    from selfsteer.training.lora import adapter_names, target_modules

    policy = _trained_policy(toy_model_path)
    names = adapter_names(policy)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"}  # the toy model is a llama
    frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
    assert any(n.endswith("embed_tokens.weight") for n in frozen)
    assert target_modules("qwen2", None) == target_modules("llama", None)
    assert target_modules("gpt2", None) == "all-linear"
    assert target_modules("llama", ("q_proj",)) == ["q_proj"]


def test_unknown_target_module_is_named(toy_model_path):
    with pytest.raises(ValueError, match="nonexistent_proj"):
        _trained_policy(toy_model_path, LoraConfig(enabled=True, target_modules=("nonexistent_proj",)))


def test_engine_given_only_the_adapter_generates_as_the_merged_model(toy_model_path):
    """The sync's path, minus the transport: adapter tensors bucketed, packed, unpacked and loaded by name
    into an HF engine holding the base; its greedy tokens equal the merged trainer model's."""
    import copy

    from selfsteer.engines.base import Sampling
    from selfsteer.engines.hf_engine import HFBackend
    from selfsteer.data.chat import encode_chat
    from selfsteer.sync.buckets import fingerprint, pack_bucket, plan_buckets, unpack_bucket
    from selfsteer.training.lora import adapter_names

    lora = LoraConfig(enabled=True, rank=4, alpha=8.0)
    policy = _trained_policy(toy_model_path, lora)
    params = dict(policy.named_parameters())
    layout = [(n, tuple(params[n].shape), params[n].dtype) for n in adapter_names(policy)]
    buckets = plan_buckets(layout, 64 << 10)
    total = sum(b.nbytes for b in buckets)
    full = sum(p.numel() * p.element_size() for p in policy.parameters())
    assert total < 0.2 * full  # what travels is the adapter, not the model
    engine = HFBackend(toy_model_path, lora=lora)
    tok = engine.tokenizer
    ids = [encode_chat(tok, p) for p in PROMPTS]
    greedy = [Sampling(temperature=0.0, max_new_tokens=12)] * len(ids)
    before = [g.token_ids for g in engine.generate(ids, greedy)]
    for b in buckets:
        flat = pack_bucket(b, {n: params[n].data for n in params}, "cpu")
        engine.load_weights(unpack_bucket(b, flat))
        mine = dict(engine.named_parameters())
        assert fingerprint(pack_bucket(b, {n: mine[n].data for n in mine}, "cpu")) == fingerprint(flat)
    merged = copy.deepcopy(policy).merge_and_unload().eval()
    expected = _greedy(merged, tok, PROMPTS)
    got = [g.token_ids for g in engine.generate(ids, greedy)]
    assert got == expected
    assert got != before, "the adapter changed nothing: the test would prove nothing"


def test_adapter_checkpoint_export_and_eval_load(toy_model_path, tmp_path):
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfsteer.training.lora import (BASE_FILE, adapter_state, base_of, export_merged, file_hash,
                                         is_adapter_checkpoint, load_causal_lm, save_adapter)

    policy = _trained_policy(toy_model_path)
    ckpt = tmp_path / "adapter"
    save_adapter(policy, ckpt, adapter_state(policy), toy_model_path, file_hash(toy_model_path))
    AutoTokenizer.from_pretrained(toy_model_path).save_pretrained(ckpt)
    assert is_adapter_checkpoint(ckpt) and (ckpt / "adapter_model.safetensors").is_file()
    assert not (ckpt / "model.safetensors").exists()  # the base is not copied
    from pathlib import Path

    assert base_of(ckpt) == str(Path(toy_model_path).resolve())

    out = export_merged(ckpt, tmp_path / "merged")
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    merged = copy.deepcopy(policy).merge_and_unload()
    want = merged.state_dict()
    for name, tensor in exported.state_dict().items():
        assert torch.allclose(tensor, want[name], atol=1e-6), name
    loaded = load_causal_lm(ckpt)  # what `selfsteer eval` and the HF engine load for an adapter checkpoint
    ids = torch.tensor([[1, 5, 9, 11]])
    assert torch.allclose(loaded(ids).logits, merged(ids).logits, atol=1e-5)
    with pytest.raises(FileExistsError):
        export_merged(ckpt, out)

    record = json.loads((ckpt / BASE_FILE).read_text())
    (ckpt / BASE_FILE).write_text(json.dumps({**record, "base_hash": "0" * 16}))
    with pytest.raises(ValueError, match="has changed"):
        base_of(ckpt)


def test_adapter_off_scores_equal_a_reference_actor_on_the_base(toy_model_path):
    """reference.mode=adapter_off's scorer (the trained policy, adapter disabled) against the
    ReferenceModel class holding the base: the same log-probs, and the adapter stays on afterwards."""
    from selfsteer.actors.reference import ReferenceModel
    from selfsteer.config.schema import ModelConfig, ReferenceConfig
    from selfsteer.training.lora import base_scores

    policy = _trained_policy(toy_model_path).train()
    reference = ReferenceModel(str(toy_model_path), ReferenceConfig(device="cpu", packing=False), ModelConfig())
    contexts = [[1, 5, 9, 11], [1, 5, 9, 11], [1, 7, 8]]
    responses = [[12, 13, 14, 2], [15, 16, 2], [20, 21, 22, 23, 2]]
    kw = dict(pad_id=reference.pad_id, device="cpu", micro_batch_size=2, mask_dtype=torch.float32, varlen=False)
    want, want_counts = reference.score(contexts, responses)
    for packed in (False, True):
        for split_head in (False, True):
            got, counts = base_scores(policy, policy, contexts, responses, per_token=False, packed=packed,
                                      split_head=split_head, **kw)
            assert counts == want_counts
            assert got == pytest.approx(want, abs=1e-4)
    tokens, _ = base_scores(policy, policy, contexts, responses, per_token=True, packed=False, split_head=False, **kw)
    assert [sum(t) for t in tokens] == pytest.approx(want, abs=1e-4)
    assert policy.training  # back in training mode
    from selfsteer.algorithms.logprobs import score_sequences

    policy.eval()
    on, _ = score_sequences(policy, contexts, responses, pad_id=reference.pad_id, device="cpu", micro_batch_size=2)
    assert not torch.allclose(on, torch.tensor(want), atol=1e-2), "adapter on scores like the base: nothing tested"

"""The toy model is a real, deterministic HF Llama directory with a ChatML word-level tokenizer."""

from __future__ import annotations

import uuid

import pytest
import torch

from selfsteer.data.chat import encode_chat
from selfsteer.toy import build_toy_model
from selfsteer.toy.prompts import toy_prompts, write_toy_prompts


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The default toy model built once into a fresh cache directory."""
    root = tmp_path_factory.mktemp("toy")
    return root, build_toy_model(root)


@pytest.fixture(scope="module")
def loaded(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, path = built
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_build_layout(built):
    root, path = built
    assert path.parent == root and path.name.startswith("llama-")
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "selfsteer_toy.json"):
        assert (path / name).is_file(), name
    # The temp build directory was renamed into place, none left behind.
    assert [p.name for p in root.iterdir()] == [path.name]


def test_same_settings_reuse_the_directory(built):
    root, path = built
    weights = path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_toy_model(root) == path
    assert build_toy_model(root, seed=0, hidden_size=64) == path  # explicit defaults are the same settings
    assert weights.stat().st_mtime_ns == before  # reused, not rewritten
    assert [p.name for p in root.iterdir()] == [path.name]


def test_same_settings_in_two_dirs_are_byte_identical(built, tmp_path):
    _, path = built
    other = build_toy_model(tmp_path)
    assert other != path and other.name == path.name  # the name hashes the settings only
    assert (other / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()


def test_different_seed_gives_different_weights(built, tmp_path):
    from safetensors.torch import load_file

    _, path = built
    other = build_toy_model(tmp_path, seed=1)
    assert other.name != path.name
    a, b = load_file(path / "model.safetensors"), load_file(other / "model.safetensors")
    assert a.keys() == b.keys()
    assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], b["model.layers.0.self_attn.q_proj.weight"])


def test_build_does_not_disturb_the_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_toy_model(tmp_path, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_loads_with_auto_classes_and_matches_settings(loaded):
    model, tokenizer = loaded
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.max_position_embeddings) == (64, 2, 4, 2, 128, 512)
    assert cfg.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 64)
    assert next(model.parameters()).dtype == torch.float32


def test_custom_size_settings(tmp_path):
    from transformers import AutoConfig

    path = build_toy_model(tmp_path, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=48)
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size) == (32, 1, 2, 1, 48)


def test_tied_embeddings_are_tied_after_load(built, loaded):
    from safetensors import safe_open

    model, _ = loaded
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert head is embed or head.data_ptr() == embed.data_ptr()
    with torch.no_grad():
        embed[5, 0] += 1.0  # a change through one is seen through the other
    assert torch.equal(head[5], embed[5])
    with torch.no_grad():
        embed[5, 0] -= 1.0
    # Stored once on disk; named_parameters lists it once (the weight-sync layout relies on this).
    with safe_open(built[1] / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
    assert "lm_head.weight" not in dict(model.named_parameters())


def test_untied_variant_has_its_own_head(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build_toy_model(tmp_path, tie_word_embeddings=False))
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert "lm_head.weight" in dict(model.named_parameters())


def test_eos_and_pad_tokens(loaded):
    model, tokenizer = loaded
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_id == im_end == model.config.eos_token_id == model.generation_config.eos_token_id
    assert tokenizer.pad_token == "<pad>"
    assert tokenizer.pad_token_id == model.config.pad_token_id == model.generation_config.pad_token_id == 0
    assert tokenizer.bos_token is None  # nothing prepended: the chat template is the whole context


def _tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


def test_chat_template_without_system(loaded):
    _, tokenizer = loaded
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    ids = encode_chat(tokenizer, "Hi there")
    assert _tokens(tokenizer, ids) == ["<|im_start|>", "user", "hi", "there", "<|im_end|>", "<|im_start|>", "assistant"]


def test_chat_template_with_system(loaded):
    _, tokenizer = loaded
    ids = encode_chat(tokenizer, "Hi there", "Be nice.")
    assert _tokens(tokenizer, ids) == ["<|im_start|>", "system", "be", "nice", ".", "<|im_end|>",
                                       "<|im_start|>", "user", "hi", "there", "<|im_end|>",
                                       "<|im_start|>", "assistant"]
    # The system turn is a pure prefix: the bare context is the tail of the principled one.
    assert ids[6:] == encode_chat(tokenizer, "Hi there")


@pytest.mark.parametrize("system", [None, ""])
def test_no_or_empty_system_renders_no_system_turn(loaded, system):
    _, tokenizer = loaded
    ids = encode_chat(tokenizer, "what is 3 plus 4 ?", system)
    assert "system" not in _tokens(tokenizer, ids)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_words_outside_the_vocab_are_unk_and_special_tokens_are_single_ids(loaded):
    _, tokenizer = loaded
    ids = tokenizer("<|im_start|>user\nzyzzyva<|im_end|>", add_special_tokens=False)["input_ids"]
    assert _tokens(tokenizer, ids) == ["<|im_start|>", "user", "<unk>", "<|im_end|>"]


def test_toy_prompts_are_deterministic_and_unique():
    first, again = toy_prompts(200, seed=3), toy_prompts(200, seed=3)
    assert first == again
    assert first != toy_prompts(200, seed=4)
    uids = [r["uuid"] for r in first]
    assert len(set(uids)) == len(uids)
    assert all(uuid.UUID(u).version == 4 for u in uids)
    assert all(set(r) == {"prompt", "uuid"} and r["prompt"].strip() for r in first)
    assert toy_prompts(0) == []


def test_toy_prompts_use_only_the_toy_vocabulary(loaded):
    _, tokenizer = loaded
    for rec in toy_prompts(64, seed=0):
        ids = tokenizer(rec["prompt"], add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, rec["prompt"]


def test_write_toy_prompts_loads_back(tmp_path, monkeypatch):
    import datasets

    from selfsteer.data.prompts import load_prompts

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    path = write_toy_prompts(tmp_path / "sub" / "toy.jsonl", n=12, seed=2)
    expected = toy_prompts(12, seed=2)
    records = load_prompts(path)
    assert [(r.uid, r.index, r.prompt) for r in records] == [(e["uuid"], i, e["prompt"]) for i, e in enumerate(expected)]

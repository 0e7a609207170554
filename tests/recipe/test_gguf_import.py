"""`selfsteer import-gguf`: the real SmolLM2 GGUF -> an HF directory that generates as the GGUF-loaded model does."""

from __future__ import annotations

import json

import pytest
import torch

from selfsteer.tools.gguf_import import GGUFImportError, import_gguf, load_gguf
from tests.recipe.conftest import smollm2_gguf

PROMPTS = ["Why do we have leap years?", "Write a haiku about rain.", "What is 2 + 3?"]


def _greedy(model, tokenizer, prompt: str, n: int = 6) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.slow
def test_import_gguf_round_trip_is_tied_and_generates_like_the_gguf_model(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safetensors import safe_open

    names = []  # every tensor in the directory's safetensors files (a tied weight appears once)
    for file in sorted(smollm2_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            names.extend(fh.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names  # one tied tensor
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["use_cache"] is True
    assert "quantization_config" not in config  # loads as a plain float model, no GGUF file needed

    saved = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    saved_tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert saved.lm_head.weight.data_ptr() == saved.model.embed_tokens.weight.data_ptr()
    assert saved_tok.chat_template and "<|im_start|>" in saved_tok.chat_template
    gguf_model, gguf_tok = load_gguf(smollm2_gguf())
    for prompt in PROMPTS:
        expected = _greedy(gguf_model, gguf_tok, prompt)
        assert len(expected) == 6
        assert _greedy(saved, saved_tok, prompt) == expected, prompt


def test_import_gguf_refuses_a_missing_file_and_an_existing_model(tmp_path):
    with pytest.raises(GGUFImportError, match="nope.gguf: GGUF file not found"):
        import_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a model"):
        import_gguf(tmp_path / "nope.gguf", tmp_path / "out")


def test_import_gguf_cli_names_the_bad_file(tmp_path, capsys):
    from selfsteer.cli.main import main

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    assert main(["import-gguf", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "broken.gguf" in err and "could not load it as a GGUF model" in err


@pytest.mark.slow
def test_benchmark_generate_by_length_keeps_answers_in_record_order(smollm2_dir):
    """The benchmarks' length-sorted batches: answer i still belongs to record i, as generated alone."""
    from selfsteer.benchmark.realbench.evaluate import generate

    recs = [{"prompt": p} for p in (PROMPTS[0] + " Explain it to a child who loves the calendar on the wall.",
                                    *PROMPTS[1:], "Name a color.")]
    alone = [generate(smollm2_dir, [r], max_new_tokens=5)[0] for r in recs]
    assert len(set(alone)) == len(recs)  # distinct answers: a permutation would show
    assert generate(smollm2_dir, recs, max_new_tokens=5, batch_size=2, by_length=True) == alone

"""Start-up warnings, logged before any actor: lr far above what fits the model size, and library
system prompts whose words the tokenizer does not know."""

from __future__ import annotations

import json
import logging
import shutil
import struct

import pytest

from selfsteer.config.schema import load_config
from selfsteer.run.startup_checks import count_parameters, lr_warning, template_warning, unknown_share


def test_lr_rule():
    assert "trainer.lr=0.001 is far above" in lr_warning(1e-3, 134_515_008)
    assert "135M-parameter" in lr_warning(2e-5, 134_515_008)
    assert lr_warning(1e-5, 134_515_008) is None and lr_warning(1e-6, 134_515_008) is None  # the paper's range
    assert lr_warning(1e-3, 110_400) is None  # the toy model: a large lr is what moves it
    assert lr_warning(1e-3, None) is None  # size unknown (no safetensors): nothing to compare with


def _sparse_safetensors(path, n_params: int) -> None:
    """A safetensors file declaring one uint8 tensor of n_params elements; sparse, so it costs no disk."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [n_params], "data_offsets": [0, n_params]}}).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + n_params)


def test_prepare_inputs_warns_about_the_lr_of_a_large_model_before_any_actor(toy_model_path, tmp_path, caplog):
    from selfsteer.actors.inputs import prepare_inputs

    big = tmp_path / "big"
    shutil.copytree(toy_model_path, big)
    (big / "model.safetensors").unlink()
    _sparse_safetensors(big / "model.safetensors", 60_000_000)
    assert count_parameters(big) == 60_000_000
    cfg = load_config("configs/tiny_cpu.yaml", [f"model.policy={big}", "trainer.lr=1e-3", "principles.max_unknown_share=1"])
    with caplog.at_level(logging.WARNING, logger="selfsteer.run.startup_checks"):
        prepare_inputs(cfg, tmp_path / "run")
    assert [r.message for r in caplog.records] == [lr_warning(1e-3, 60_000_000)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="selfsteer.run.startup_checks"):
        prepare_inputs(load_config("configs/tiny_cpu.yaml", [f"model.policy={big}", "trainer.lr=1e-6",
                                                             "principles.max_unknown_share=1"]), tmp_path / "run")
    assert not caplog.records


def test_unknown_template_words_are_warned_with_their_share(toy_model_path, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(toy_model_path)
    assert unknown_share(tokenizer, "write a short answer") == 0.0
    assert unknown_share(tokenizer, "write a short answer zxqv") == pytest.approx(1 / 5)
    # The built-in library's English is mostly outside the toy's word list.
    cfg = load_config(None, ["principles.max_unknown_share=0.05"]).principles
    warning = template_warning(cfg, tokenizer)
    assert "tokens are unknown ('<unk>')" in warning and "principles.max_unknown_share=0.05" in warning
    # A library and template in the toy's own words: nothing unknown, no warning.
    library = tmp_path / "lib.yaml"
    library.write_text("- {name: Short, good: write a short answer, bad: write a long answer}\n"
                       "- {name: Clear, good: write a clear answer, bad: write a bad answer}\n")
    cfg = load_config(None, [f"principles.library_file={library}", "principles.system_template=bare"]).principles
    assert template_warning(cfg, tokenizer) is None
    cfg = load_config(None, [f"principles.library_file={library}"]).principles  # "Your response should be ..."
    assert template_warning(cfg, tokenizer) is not None  # "Short:" / "Clear:" headers and "Never reveal, quote ..."


def test_the_smollm2_config_is_sane_for_a_135m_model():
    cfg = load_config("configs/smollm2_135m_cpu.yaml")
    assert 5e-7 <= cfg.trainer.lr <= 1e-6 and lr_warning(cfg.trainer.lr, 134_515_008) is None
    assert cfg.model.dtype == "float32" and cfg.rollout.num_engines == 1 and cfg.trainer.num_ranks == 1
    assert cfg.model.policy == "models/smollm2-135m-instruct"  # made by `selfsteer import-gguf` (the YAML's header)

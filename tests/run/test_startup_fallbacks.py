"""Loud fallbacks (issue 23): a start-up probe that turns a feature off logs a warning naming the
feature, the role and why, and reports `startup/fallback/<feature>` = 1 for the run's metrics."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import torch

from selfsteer.config.schema import load_config
from selfsteer.run.startup_checks import collect_fallbacks
from selfsteer.utils.runtime import attention_choice


def test_reference_probes_that_fail_are_warned_and_reported(toy_model_path, monkeypatch, caplog):
    import selfsteer.actors.reference as reference
    import selfsteer.actors.scoring as scoring

    cfg = load_config("configs/tiny_cpu.yaml", ["reference.packing=true"])
    quiet = reference.ReferenceModel(str(toy_model_path), cfg.reference, cfg.model)
    assert quiet.packed and quiet.split_head and quiet.fallbacks() == {}  # the toy passes both probes for real

    # Forced failures: the probes answer "scores differ", as a bf16 model whose kernel ignores the mask would.
    monkeypatch.setattr(scoring, "packing_supported", lambda *a, **k: False)
    monkeypatch.setattr(scoring, "split_head_supported", lambda *a, **k: False)
    with caplog.at_level(logging.WARNING, logger="selfsteer.run.startup_checks"):
        ref = reference.ReferenceModel(str(toy_model_path), cfg.reference, cfg.model)
    assert not ref.packed and not ref.split_head
    assert ref.fallbacks() == {"startup/fallback/packing": 1.0, "startup/fallback/split_head": 1.0}
    text = caplog.text
    assert "reference: packing is off: packed rows score differently" in text
    assert "reference: split_head is off" in text


def test_flash_attention_that_does_not_import_is_a_named_fallback(monkeypatch):
    assert attention_choice("cpu", torch.bfloat16) == (None, None)  # never expected on CPU: no fallback
    assert attention_choice("cuda", torch.float32) == (None, None)  # nor in fp32
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import flash_attn raises ImportError
    impl, why = attention_choice("cuda", torch.bfloat16)
    assert impl is None and why.startswith("flash_attn does not import (ModuleNotFoundError")


def test_collect_fallbacks_merges_trainer_ranks_and_skips_absent_references():
    cfg = load_config("configs/tiny_cpu.yaml", [])
    roles = SimpleNamespace(cfg=cfg, references=[], trainer=SimpleNamespace(infos=[
        {"rank": 0, "fallbacks": {"startup/fallback/split_head": 1.0}},
        {"rank": 1, "fallbacks": {"startup/fallback/packing": 1.0}}, {"rank": 2}]))
    assert collect_fallbacks(roles) == {"startup/fallback/split_head": 1.0, "startup/fallback/packing": 1.0}

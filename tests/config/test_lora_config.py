"""model.lora and reference.mode: the shipped LoRA configs, field checks, and every combination that is
refused names why (sipo, colocated, refresh_every, async_rounds, adapter_off without LoRA)."""

from __future__ import annotations

import pytest

from selfsteer.config.schema import load_config

LORA = ["model.lora.enabled=true"]


@pytest.mark.parametrize("path", ["configs/smollm2_135m_cpu_lora.yaml", "configs/qwen2_7b_instruct_lora.yaml"])
def test_shipped_lora_configs(path):
    cfg = load_config(path)
    assert cfg.model.lora.enabled and cfg.reference.mode == "adapter_off"


def test_off_by_default():
    cfg = load_config()
    assert not cfg.model.lora.enabled and cfg.reference.mode == "actor" and cfg.model.lora.target_modules is None


@pytest.mark.parametrize("algo", ["sso", "dpo", "self_contrast", "sepo"])
def test_methods_that_run_with_lora(algo):
    assert load_config(None, [f"algo={algo}", *LORA, "reference.mode=adapter_off"]).model.lora.enabled


@pytest.mark.parametrize("overrides,expected", [
    (["model.lora.rank=0"], "model.lora.rank=0 must be > 0"),
    (["model.lora.alpha=-1"], "model.lora.alpha=-1.0 must be > 0"),
    (["model.lora.dropout=1.0"], "model.lora.dropout=1.0 must be in [0, 1)"),
    (["model.lora.target_modules=[]"], "model.lora.target_modules=[] must name at least one module"),
    (["reference.mode=frozen"], "reference.mode='frozen' is not one of ['actor', 'trainer', 'adapter_off']"),
    (["reference.mode=adapter_off"], "reference.mode=adapter_off scores with the LoRA adapter switched off, so it needs "
                                     "model.lora.enabled=true"),
    ([*LORA, "reference.mode=adapter_off", "model.reference=/models/other"], "model.reference='/models/other' needs "
                                                                            "reference.mode=actor"),
    ([*LORA, "reference.refresh_every=1"], "with LoRA those are the adapter's only"),
    ([*LORA, "reference.mode=adapter_off", "reference.refresh_every=1"], "the reference is the frozen base"),
    ([*LORA, "reference.mode=adapter_off", "async_rounds=true"], "which async_rounds=true keeps busy training"),
    ([*LORA, "algo=sipo", "rollout.backend=hf_mod", "model.policy=task"], "LoRA policies are not supported there"),
    ([*LORA, "placement=colocated"], "with LoRA only the adapter travels; use placement=separate"),
    ([*LORA, "reference.mode=trainer"], "that model is the policy's own frozen base: use reference.mode=adapter_off"),
    (["reference.mode=trainer", "reference.refresh_every=1"], "the start model, held fixed by the ranks"),
    (["reference.mode=trainer", "async_rounds=true"], "which async_rounds=true keeps busy training"),
    (["reference.mode=trainer", "algo=sipo", "rollout.backend=hf_mod", "model.policy=task"],
     "SIPO scores its two policies' references on its own scorer actor"),
])
def test_refusals_name_the_reason(refused, overrides, expected):
    assert expected in refused(None, overrides)


def test_lora_lr_bound():
    from selfsteer.run.startup_checks import lr_warning

    assert lr_warning(5e-5, 135_000_000, lora=True) is None
    assert "LoRA adapter" in lr_warning(1e-3, 135_000_000, lora=True)
    assert lr_warning(5e-5, 135_000_000) is not None  # the full fine-tuning bound is unchanged

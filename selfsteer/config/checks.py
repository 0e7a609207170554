"""Checks across config sections: which algo, placement, async, LoRA and eval settings combine.

A section's own values are checked in its `__post_init__` (`schema.py`, `sections.py`); a rule that
reads two sections lives here, run by `RunConfig.__post_init__`, so a bad pair fails at load time.
"""

from __future__ import annotations

from selfsteer.algorithms.registry import METHODS, method
from selfsteer.config.sections import ConfigError, PairsConfig, _check_choice, _check_positive

ALGOS = tuple(METHODS)  # the online methods (selfsteer.algorithms.registry)


def check_run(cfg) -> None:
    """The run-level rules on a `RunConfig` being built: what one section's value means for another
    (algo, placement, async, LoRA, eval). Raises ConfigError naming the keys and the fix."""
    _check_choice("", "algo", cfg.algo, ALGOS)
    _check_choice("", "placement", cfg.placement, ("separate", "colocated"))
    if cfg.placement == "colocated" and cfg.async_rounds:
        raise ConfigError("placement=colocated runs phases one after another on the same devices; "
                          "async_rounds=true needs placement=separate")
    if cfg.placement == "colocated" and not method(cfg.algo).supports("colocated"):
        raise ConfigError(f"placement=colocated runs algo {_with('colocated')}, not {cfg.algo!r}")
    if cfg.placement == "colocated" and not cfg.rollout.update_weights:
        raise ConfigError("placement=colocated frees the engines' weights during training and reloads them "
                          "from the trainer; rollout.update_weights=false needs placement=separate")
    if cfg.async_rounds and not method(cfg.algo).supports("async"):
        raise ConfigError(f"async_rounds=true runs algo {_with('async')} only, not {cfg.algo!r}")
    _check_positive("", "rounds", cfg.rounds)
    _check_positive("", "save_every", cfg.save_every)
    _check_positive("", "save_state_every", cfg.save_state_every)
    if cfg.algo == "sipo" and cfg.rollout.backend != "hf_mod":
        raise ConfigError(f"algo=sipo decodes with two fused policies, which needs rollout.backend=hf_mod (got "
                          f"{cfg.rollout.backend!r}): vLLM cannot run a second model inside its decoding step")
    if cfg.algo == "sipo" and cfg.model.policy != "task" and not (cfg.sipo.pairs_a or cfg.sipo.policy_a):
        raise ConfigError("algo=sipo needs sipo.pairs_a/pairs_b (stage 0 DPO pairs) or sipo.policy_a/policy_b "
                          "(trained policies); only the alignment task's model (model.policy=task) has built-in pairs")
    if cfg.eval.every and cfg.data.prompts != "task":
        raise ConfigError(f"eval.every={cfg.eval.every} scores the alignment task's held-out prompts with its gold "
                          f"rules, so it needs data.prompts=task (got {cfg.data.prompts!r}); score other runs' "
                          "checkpoints with `selfsteer eval`")
    if cfg.eval.every and not cfg.rollout.update_weights:
        raise ConfigError("eval.every evaluates the weights the engines hold, and rollout.update_weights=false keeps "
                          "them at the start model; score the run's checkpoints with `selfsteer eval` instead")
    _check_lora(cfg)
    remedies = cfg.pairs != PairsConfig() or cfg.reference.refresh_every
    if remedies and not method(cfg.algo).supports("remedies"):
        raise ConfigError(f"pairs.* and reference.refresh_every act on SSO/DPO pairs, not algo {cfg.algo!r}")


def _with(feature: str) -> str:
    """The algos that support `feature`, for an error message ("sso or dpo")."""
    return " or ".join(name for name, m in METHODS.items() if m.supports(feature))


def _check_lora(cfg) -> None:
    """model.lora and reference.mode (adapter_off, trainer) against the rest of the run: what cannot
    combine, and why."""
    lora, ref = cfg.model.lora, cfg.reference
    if ref.mode == "adapter_off":
        if not lora.enabled:
            raise ConfigError("reference.mode=adapter_off scores with the LoRA adapter switched off, so it needs "
                              "model.lora.enabled=true; use reference.mode=actor for full fine-tuning")
        if cfg.model.reference is not None:
            raise ConfigError(f"reference.mode=adapter_off uses the policy's own base as the reference; "
                              f"model.reference={cfg.model.reference!r} needs reference.mode=actor")
    if ref.mode == "trainer":
        if lora.enabled:
            raise ConfigError("reference.mode=trainer holds a second copy of the start model on the trainer ranks; "
                              "with model.lora that model is the policy's own frozen base: use "
                              "reference.mode=adapter_off")
        if cfg.algo == "sipo":
            raise ConfigError("reference.mode=trainer with algo=sipo: SIPO scores its two policies' references on "
                              "its own scorer actor; use reference.mode=actor")
    if ref.mode != "actor":  # the trainer ranks score the reference
        if ref.refresh_every:
            held = "the frozen base" if ref.mode == "adapter_off" else "the start model, held fixed by the ranks"
            raise ConfigError(f"reference.refresh_every moves the reference to the policy; with reference.mode="
                              f"{ref.mode} the reference is {held}. Use reference.mode=actor")
        if cfg.async_rounds:
            raise ConfigError(f"reference.mode={ref.mode} scores on the trainer ranks, which async_rounds=true keeps "
                              "busy training; use reference.mode=actor or async_rounds=false")
    if not lora.enabled:
        return
    if cfg.algo == "sipo":
        raise ConfigError("model.lora with algo=sipo: SIPO's stage 0 trains two full policies and its MOD engine "
                          "fuses two full models (rollout.backend=hf_mod); LoRA policies are not supported there")
    if ref.refresh_every:
        raise ConfigError("model.lora with reference.refresh_every: the refresh copies the synced tensors into the "
                          "reference, and with LoRA those are the adapter's only; set reference.refresh_every=0")
    if cfg.placement == "colocated":
        raise ConfigError("model.lora with placement=colocated: colocated engines free all their weights while "
                          "the trainer trains and refill them from the sync, but with LoRA only the adapter "
                          "travels; use placement=separate")

"""The recipe's defaults fill only what the user left unset; trainer groups may train plain DPO."""

from __future__ import annotations

import pytest

from selfsteer.config.schema import ConfigError
from selfsteer.recipe.settings import recipe_config, trainer_config


def test_defaults_are_the_recipes():
    cfg = recipe_config()
    assert (cfg.loss.variant, cfg.loss.base, cfg.loss.beta) == ("v2", "dpo", 0.1)  # docs/concepts/sso.md §4
    assert cfg.rollout.sampling.raw_greedy and cfg.principles.mode == "llm"
    assert (cfg.trainer.lr, cfg.trainer.grad_accum, cfg.trainer.warmup_ratio) == (5e-7, 4, 0.04)
    assert recipe_config(dpo=True).trainer.grad_accum == 32


def test_yaml_and_overrides_win_over_the_recipe(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  variant: v1\n  base: ipo\ntrainer:\n  grad_accum: 8\n")
    cfg = recipe_config(path, ["loss.beta=0.3", "rollout.sampling.raw_greedy=false"])
    assert (cfg.loss.variant, cfg.loss.base, cfg.loss.beta) == ("v1", "ipo", 0.3)
    assert not cfg.rollout.sampling.raw_greedy
    assert recipe_config(path, dpo=True).trainer.grad_accum == 8  # set by the user: both phases use it


def test_errors_still_name_the_key():
    with pytest.raises(ConfigError, match="loss.varient"):
        recipe_config(None, ["loss.varient=v2"])
    with pytest.raises(ConfigError, match="principles.llm.base_url"):
        recipe_config(None, ["principles.llm.source=http"])


def test_trainer_config_names_the_loss_and_trains_one_epoch_per_call():
    cfg = recipe_config(None, ["trainer.epochs_per_round=3"])
    tcfg = trainer_config(cfg, "dpo")
    assert tcfg.algo == "dpo" and tcfg.trainer.epochs_per_round == 1
    assert tcfg.loss == cfg.loss and tcfg.model == cfg.model
    with pytest.raises(ConfigError, match="not a trainer loss"):
        trainer_config(cfg, "ppo")

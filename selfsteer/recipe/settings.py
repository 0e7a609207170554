"""The recipe's settings: its defaults under the user's config, and the config each trainer group gets.

The recipe runs on the same `RunConfig` as the online loop. Where neither the YAML file nor a
command-line override sets a key, the recipe's own value applies (docs/concepts/sso.md §4, the recipe's
sso.bash and dpo.bash): v2 loss with base dpo and beta 0.1, greedy y^o, principles written by an
LLM, lr 5e-7 with cosine decay and 4% warmup, accumulation 4 for SSO and 32 for the final DPO.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from selfsteer.config.schema import ConfigError, RunConfig, load_config

RECIPE_DEFAULTS: dict[str, Any] = {
    "principles.mode": "llm",
    "rollout.sampling.raw_greedy": True,  # y^o greedy (docs/concepts/sso.md §7, v2)
    "loss.variant": "v2",
    "loss.base": "dpo",
    "loss.beta": 0.1,
    "trainer.lr": 5e-7,
    "trainer.weight_decay": 0.1,
    "trainer.lr_scheduler": "cosine",
    "trainer.warmup_ratio": 0.04,
    "trainer.micro_batch_size": 1,
    "trainer.grad_accum": 4,
    "trainer.epochs_per_round": 1,
    "data.max_prompt_tokens": 1024,
}
DPO_DEFAULTS: dict[str, Any] = {"trainer.grad_accum": 32}  # dpo.bash


def recipe_config(path: Optional[str | Path] = None, overrides: tuple[str, ...] | list[str] = (), *,
                  dpo: bool = False) -> RunConfig:
    """Load a RunConfig with the recipe's defaults for every key the user did not set.

    Args:
        path: optional YAML file (the same schema as `selfsteer run`).
        overrides: dotted `key=value` strings.
        dpo: the settings of the final DPO phase (accumulation 32 unless set).

    Raises:
        ConfigError: as `load_config`.
    """
    user_keys = set(_yaml_keys(path)) | {o.split("=", 1)[0].strip() for o in overrides if "=" in o}
    defaults = {**RECIPE_DEFAULTS, **(DPO_DEFAULTS if dpo else {})}
    implied = [f"{key}={_dotlist_value(value)}" for key, value in defaults.items() if key not in user_keys]
    return load_config(path, [*implied, *overrides])


def _yaml_keys(path: Optional[str | Path]) -> list[str]:
    if path is None or not Path(path).is_file():
        return []  # load_config reports a missing file
    from omegaconf import DictConfig, OmegaConf

    try:
        loaded = OmegaConf.load(path)
    except Exception:  # load_config reports the YAML error with its own message
        return []
    if not isinstance(loaded, DictConfig):
        return []

    def flat(node: dict, prefix: str = ""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    return list(flat(OmegaConf.to_container(loaded)))


def _dotlist_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class TrainerRunConfig(RunConfig):
    """The RunConfig a recipe trainer group gets: `algo` names any trainer loss ("sso" or "dpo").

    `selfsteer run` accepts only the online algorithms; training on a fixed file may also use the
    plain DPO loss (phase 5), which the trainer looks up by `algo` in its loss registry.
    """

    def __post_init__(self):
        from selfsteer.algorithms.registry import LOSSES

        if self.algo not in LOSSES:
            raise ConfigError(f"algo={self.algo!r} is not a trainer loss; valid: {sorted(LOSSES)}")


def trainer_config(cfg: RunConfig, algo: str) -> RunConfig:
    """`cfg` for a trainer group training `algo`; the recipe loops epochs itself, one call per chunk.
    Its reference is always its own actor (recipe.training), so the ranks load no frozen copy."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    reference = cfg.reference if cfg.reference.mode != "trainer" else dataclasses.replace(cfg.reference, mode="actor")
    values.update(algo=algo, trainer=dataclasses.replace(cfg.trainer, epochs_per_round=1), reference=reference)
    return TrainerRunConfig(**values)

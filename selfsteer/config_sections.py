"""Config sections that belong to one algorithm, the benchmark task or signal health, and the
validation helpers every section uses. `selfsteer.config` re-exports all of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the source."""


def _key(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def _check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{_key(section, name)}={value!r} is not one of {list(choices)}")


def _check_positive(section: str, name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{_key(section, name)}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


@dataclass(frozen=True)
class TaskConfig:
    """The verifiable alignment task (selfsteer.toy.task), used where `model.policy`, `data.prompts`
    or `principles.library_file` is "task". The start model's architecture and seed are `model.toy`'s."""

    split_seed: int = 0  # which prompts are held out
    sft_examples: int = 16000
    sft_batch_size: int = 16
    sft_lr: float = 2.0e-3
    unprompted_rate: float = 0.5  # P(a rule is met) where no principle names it
    steerability: float = 1.0  # P(the SFT response obeys a principle it was given)
    no_system_rate: float = 0.34  # share of SFT conversations without a system prompt
    train_prompts: int = 2048  # prompts written for the run, kinds in equal shares

    def __post_init__(self):
        for name in ("sft_examples", "sft_batch_size", "sft_lr", "train_prompts"):
            _check_positive("task", name, getattr(self, name))
        for name in ("unprompted_rate", "steerability", "no_system_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"task.{name}={getattr(self, name)!r} must be in [0, 1]")

@dataclass(frozen=True)
class SelfContrastConfig:
    """`algo: self_contrast` (shared/spec/self_contrast.md): y* vs k embedding-selected own samples."""

    target_field: str = "response"  # the SFT answer y* in the prompts file (toy data has one)
    n_samples: int = 32
    k: int = 16  # negatives per prompt; a prompt with fewer usable ones gives no pairs this round
    drop_fraction: float = 0.25  # the most y*-like samples cut before drawing (lastdedup-75)
    beta: float = 0.1
    encoder_path: Optional[str] = None  # a sentence-transformers directory; None = packaged all-MiniLM-L6-v2
    embed_batch_size: int = 64
    num_cpus: float = 0.25  # the embedding actor

    def __post_init__(self):
        _check_positive("self_contrast", "n_samples", self.n_samples)
        _check_positive("self_contrast", "k", self.k)
        _check_positive("self_contrast", "beta", self.beta)
        if not 0 <= self.drop_fraction < 1:
            raise ConfigError(f"self_contrast.drop_fraction={self.drop_fraction!r} must be in [0, 1)")
        if self.k > self.n_samples:
            raise ConfigError(f"self_contrast.k={self.k} must be <= self_contrast.n_samples={self.n_samples}")

@dataclass(frozen=True)
class SepoConfig:
    """`algo: sepo` (shared/spec/sepo.md): oracle token rewards pick the tokens the policy trains on."""

    oracle_path: Optional[str] = None  # a DPO-trained oracle (HF dir); else one is trained and cached
    oracle_pairs: Optional[str] = None  # JSONL prompt/chosen/rejected to train it on (toy: built-in pairs)
    oracle_train_pairs: int = 64  # toy pairs when neither of the above is given
    oracle_beta: float = 0.1
    oracle_steps: int = 40
    oracle_lr: float = 1.0e-3
    oracle_batch_size: int = 8
    fraction: float = 0.3  # share of each response's tokens kept (top for chosen, bottom for rejected)
    beta: float = 1.0  # the released code's effective values: beta 1, no margin
    gamma: float = 0.0
    num_cpus: float = 0.25  # the oracle actor (and its one-off training task)

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"sepo.fraction={self.fraction!r} must be in (0, 1]")
        _check_positive("sepo", "beta", self.beta)
        _check_positive("sepo", "oracle_beta", self.oracle_beta)
        _check_positive("sepo", "oracle_steps", self.oracle_steps, allow_zero=True)

@dataclass(frozen=True)
class SignalConfig:
    """Watch one gold-free signal metric; alert (and optionally stop) once it is out of bounds for
    `patience` rounds in a row. Default: alert when most y+/y- pairs come out identical."""

    metric: str = "signal/pair_identical"
    max_value: Optional[float] = 0.5
    min_value: Optional[float] = None
    patience: int = 2
    early_stop: bool = False  # end the run (after saving the round) instead of only alerting

    def __post_init__(self):
        _check_positive("signal", "patience", self.patience)


@dataclass(frozen=True)
class PairsConfig:
    """Which of a round's SSO/DPO pairs the trainer sees: remedies for an eroding self-generated
    signal (README "Signal health"). Defaults keep every pair the spec keeps."""

    filter: str = "none"  # none | v1: spec sso.md §7's optional filter, on the reference's log-probs
    drop_similar: float = 1.0  # drop pairs whose y+/y- similarity (difflib ratio) is >= this; 1.0: identical only
    replay: float = 0.0  # per new pair, this many pairs drawn from earlier rounds (0: none)
    replay_rounds: int = 4  # how many earlier rounds the replay draws from

    def __post_init__(self):
        _check_choice("pairs", "filter", self.filter, ("none", "v1"))
        if not 0 < self.drop_similar <= 1:
            raise ConfigError(f"pairs.drop_similar={self.drop_similar!r} must be in (0, 1]")
        _check_positive("pairs", "replay", self.replay, allow_zero=True)
        _check_positive("pairs", "replay_rounds", self.replay_rounds)

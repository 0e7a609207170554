"""Config sections that belong to one algorithm, the benchmark task, signal health or the principle
writer, and the validation helpers every section uses. `selfsteer.config.schema` re-exports all of them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from selfsteer.data.chat import PLACEMENTS


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the source."""


def _key(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def _check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{_key(section, name)}={value!r} is not one of {list(choices)}")


def _check_finite(section: str, name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{_key(section, name)}={value!r} must be a finite number")


def _check_positive(section: str, name: str, value: float, allow_zero: bool = False) -> None:
    _check_finite(section, name, value)  # nan compares false with everything and would pass below
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{_key(section, name)}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


@dataclass(frozen=True)
class TaskConfig:
    """The verifiable alignment task (selfsteer.toy.task), used where `model.policy`, `data.prompts`
    or `principles.library_file` is "task". The start model's architecture and seed are `model.toy`'s."""

    split_seed: int = 0  # which prompts are held out
    sft_examples: int = 16000  # synthetic conversations the start model is SFT'd on
    sft_batch_size: int = 16  # start-model SFT batch size
    sft_lr: float = 2.0e-3  # start-model SFT learning rate
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
    """`algo: self_contrast` (docs/concepts/self-contrast.md): y* vs k embedding-selected own samples."""

    target_field: str = "response"  # the SFT answer y* in the prompts file (toy data has one)
    n_samples: int = 32  # answers sampled per prompt (the paper: 32)
    k: int = 16  # negatives per prompt; a prompt with fewer usable ones gives no pairs this round
    drop_fraction: float = 0.25  # the most y*-like samples cut before drawing (lastdedup-75)
    beta: float = 0.1  # DPO beta
    encoder_path: Optional[str] = None  # a sentence-transformers directory; None = packaged all-MiniLM-L6-v2
    embed_batch_size: int = 64  # texts per encoder forward pass
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
    """`algo: sepo` (docs/concepts/sepo.md): oracle token rewards pick the tokens the policy trains on."""

    oracle_path: Optional[str] = None  # a DPO-trained oracle (HF dir); else one is trained and cached
    oracle_pairs: Optional[str] = None  # JSONL prompt/chosen/rejected to train it on (toy: built-in pairs)
    oracle_train_pairs: int = 64  # toy pairs when neither of the above is given
    oracle_beta: float = 0.1  # DPO beta of the oracle's training
    oracle_steps: int = 40  # optimizer steps of the oracle's training
    oracle_lr: float = 1.0e-3  # learning rate of the oracle's training
    oracle_batch_size: int = 8  # pairs per oracle training step
    fraction: float = 0.3  # share of each response's tokens kept (top for chosen, bottom for rejected)
    beta: float = 1.0  # the released code's effective values: beta 1, no margin
    gamma: float = 0.0  # margin inside the loss: softplus(-(beta*(m_c - m_r) - gamma))
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

    metric: str = "signal/pair_identical"  # the metrics.jsonl key watched (any signal/, train/ or data/ metric)
    max_value: Optional[float] = 0.5  # out of bounds above this (null: no upper bound)
    min_value: Optional[float] = None  # out of bounds below this (null: no lower bound)
    patience: int = 2  # rounds in a row out of bounds before the alert
    early_stop: bool = False  # end the run (after saving the round) instead of only alerting
    # Warn when the good principle's answers stop answering the question (the probe's "derails"):
    # cosine of question and answer under the packaged MiniLM encoder (selfsteer[algos]), chosen vs
    # unprompted answers. For natural-language prompts; the toy task's token strings have no topic.
    on_topic: bool = False

    def __post_init__(self):
        _check_positive("signal", "patience", self.patience)


@dataclass(frozen=True)
class EvalConfig:
    """Gold evaluation during a run (selfsteer.online.gold_eval): the rollout engines answer the
    alignment task's held-out prompts with the weights they hold, and the task's program scores
    them. Needs `data.prompts: task` (held-out prompts never seen in training)."""

    every: int = 0  # score the start weights, then every N-th round and the last; 0: off
    prompts: int = 96  # held-out prompts, kinds in equal shares (the alignment benchmark's set)
    samples: int = 4  # sampled answers per prompt (besides one greedy answer)
    temperature: float = 1.0  # the policy's own distribution, not the rollouts' sharpened one
    max_new_tokens: int = 32  # answer length cap
    seed: int = 1234  # seeds the sampled answers, so rounds compare alike

    def __post_init__(self):
        _check_positive("eval", "every", self.every, allow_zero=True)
        for name in ("prompts", "samples", "max_new_tokens"):
            _check_positive("eval", name, getattr(self, name))
        _check_positive("eval", "temperature", self.temperature, allow_zero=True)


@dataclass(frozen=True)
class PairsConfig:
    """Which of a round's SSO/DPO pairs the trainer sees: remedies for an eroding self-generated
    signal (docs/guide/signal-health.md). Defaults keep every pair the spec keeps."""

    filter: str = "none"  # none | v1: the optional filter of docs/concepts/sso.md §7, on the reference's log-probs
    drop_similar: float = 1.0  # drop pairs whose y+/y- similarity (difflib ratio) is >= this; 1.0: identical only
    replay: float = 0.0  # per new pair, this many pairs drawn from earlier rounds (0: none)
    replay_rounds: int = 4  # how many earlier rounds the replay draws from

    def __post_init__(self):
        _check_choice("pairs", "filter", self.filter, ("none", "v1"))
        if not 0 < self.drop_similar <= 1:
            raise ConfigError(f"pairs.drop_similar={self.drop_similar!r} must be in (0, 1]")
        _check_positive("pairs", "replay", self.replay, allow_zero=True)
        _check_positive("pairs", "replay_rounds", self.replay_rounds)


@dataclass(frozen=True)
class SipoConfig:
    """`algo: sipo` (docs/concepts/sipo.md): MOD candidates of two policies, Pareto-filtered on
    implicit rewards, re-align both. Stage 0 DPO-trains pi_A0 and pi_B0 from the start model."""

    weights: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)  # W: one greedy MOD candidate per w (w multiplies A)
    beta: float = 0.1  # implicit-reward and DPO beta
    alpha: float = 0.1  # weight of the length-normalised NLL of the chosen candidate
    rewrite: bool = False  # review + rewrite each candidate (MOD, same w), kept if better on A0 or B0
    max_new_tokens: int = 32  # MOD candidate length cap
    # Stage 0. Files: JSONL prompt/chosen/rejected per objective; the task model: built-in pairs
    # where `objective_a` and `objective_b` (gold rules) disagree. Or give trained policies.
    pairs_a: Optional[str] = None
    pairs_b: Optional[str] = None  # objective B's stage-0 pairs (JSONL prompt/chosen/rejected)
    policy_a: Optional[str] = None  # HF dirs of already DPO-trained pi_A0 / pi_B0 (skip stage 0)
    policy_b: Optional[str] = None  # pi_B0's HF directory (with policy_a)
    objective_a: str = "Politeness"  # the task's gold rule objective A prefers (built-in stage-0 pairs)
    objective_b: str = "Length"  # the task's gold rule objective B prefers; must differ from objective_a
    stage0_pairs: int = 256  # built-in pairs per objective
    stage0_steps: int = 120  # stage-0 DPO optimizer steps (0: none)
    stage0_lr: float = 1.0e-3  # stage-0 DPO learning rate
    stage0_batch_size: int = 8  # pairs per stage-0 step

    def __post_init__(self):
        if not self.weights or any(not 0 <= w <= 1 for w in self.weights):
            raise ConfigError(f"sipo.weights={list(self.weights)!r} must be a non-empty list of values in [0, 1]")
        for name in ("beta", "max_new_tokens", "stage0_pairs", "stage0_lr", "stage0_batch_size"):
            _check_positive("sipo", name, getattr(self, name))
        _check_positive("sipo", "alpha", self.alpha, allow_zero=True)
        _check_positive("sipo", "stage0_steps", self.stage0_steps, allow_zero=True)
        if self.objective_a == self.objective_b:
            raise ConfigError(f"sipo.objective_a and sipo.objective_b are both {self.objective_a!r}; SIPO needs two objectives")
        if bool(self.policy_a) != bool(self.policy_b) or bool(self.pairs_a) != bool(self.pairs_b):
            raise ConfigError("sipo.policy_a/policy_b (and sipo.pairs_a/pairs_b) are given together or not at all")


@dataclass(frozen=True)
class LLMPrincipleConfig:
    """`llm` principle mode: who writes the principles and how hard we try to parse them."""

    # policy (through the rollout engines) | model (a separate local model) | http (an OpenAI-compatible server)
    source: str = "policy"
    model_path: Optional[str] = None  # source=model: the writer's local HF directory
    max_retries: int = 2  # retries of an empty, unparseable or rejected reply before the fallback pair
    temperature: float = 0.7  # the writer's sampling temperature (the recipe's 0.7)
    top_p: float = 0.8  # the writer's nucleus mass (the recipe's 0.8)
    max_new_tokens: int = 256  # per guideline
    # source=http (selfsteer.principles.endpoint): e.g. vLLM's `vllm serve` or `selfsteer serve`.
    base_url: Optional[str] = None  # API root, e.g. http://127.0.0.1:8000/v1
    model_name: Optional[str] = None  # served model name; None = the server's first model
    api_key_env: Optional[str] = None  # NAME of the env var holding the API key (never the key itself)
    timeout_s: float = 120.0  # per request
    http_retries: int = 3  # extra attempts after a connection error, timeout or HTTP 429/5xx
    max_concurrency: int = 8  # requests in flight
    # source=model: the writer actor's Ray resources; it loads the model on a GPU when num_gpus > 0.
    # 0 CPUs: it shares the CPUs of the roles (the CPU default, where it mostly waits).
    num_cpus: float = 0.0
    num_gpus: float = 0.0  # source=model: GPUs of the writer actor
    # Reply screen (selfsteer.principles.screen): degenerate replies are retried, counted, then fall back.
    min_words: int = 4  # a guideline shorter than this (after header-like scaffolding) is rejected
    reject_answers: bool = True  # reject replies that answer the query instead of guiding the answer
    fallback_warn_rate: float = 0.5  # WARNING when a round's share of fallback pairs exceeds this

    def __post_init__(self):
        _check_choice("principles.llm", "source", self.source, ("policy", "model", "http"))
        if self.source == "model" and not self.model_path:
            raise ConfigError("principles.llm.source=model needs principles.llm.model_path")
        if self.source == "http" and not (self.base_url or "").startswith(("http://", "https://")):
            raise ConfigError(f"principles.llm.source=http needs principles.llm.base_url=http://HOST:PORT/v1, "
                              f"got {self.base_url!r}")
        _check_positive("principles.llm", "max_retries", self.max_retries, allow_zero=True)
        _check_positive("principles.llm", "timeout_s", self.timeout_s)
        _check_positive("principles.llm", "http_retries", self.http_retries, allow_zero=True)
        _check_positive("principles.llm", "max_concurrency", self.max_concurrency)
        _check_positive("principles.llm", "num_cpus", self.num_cpus, allow_zero=True)
        _check_positive("principles.llm", "num_gpus", self.num_gpus, allow_zero=True)
        _check_positive("principles.llm", "min_words", self.min_words, allow_zero=True)
        if not 0 <= self.fallback_warn_rate <= 1:
            raise ConfigError(f"principles.llm.fallback_warn_rate={self.fallback_warn_rate!r} must be in [0, 1]")

    def actor_resources(self, mode: str) -> dict:
        """Ray resources of the principle actor: a local writer model (source=model) gets num_cpus/num_gpus;
        otherwise the actor only waits on the engines or an HTTP server."""
        if mode == "llm" and self.source == "model":
            return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        return {"num_cpus": 0.0, "num_gpus": 0.0}


@dataclass(frozen=True)
class PrincipleConfig:
    mode: str = "library"  # library | llm
    library_file: Optional[str] = None  # YAML/JSON of dimensions; None = built-in v1 library
    num_dimensions: int = 2  # library dimensions drawn per prompt
    concision_prob: float = 0.2  # chance Concision is added to the draw
    # Library mode's system prompt: a preset (selfsteer | paper | v2 | bare) or your own text with
    # the placeholders {adjectives} {guidelines} {principles} {quality} {never_reveal}
    # (selfsteer.principles.library.SYSTEM_TEMPLATES).
    system_template: str = "selfsteer"
    # Where the principle text goes: the system prompt (the spec), after the user's question (user) or
    # before it (user_before): for a small model that ignores its system prompt; measure with
    # `selfsteer probe --placement`.
    placement: str = "system"
    # Start-up check: warn when more than this share of a sample system prompt's tokens are unknown.
    max_unknown_share: float = 0.05
    llm: LLMPrincipleConfig = field(default_factory=LLMPrincipleConfig)

    def __post_init__(self):
        _check_choice("principles", "mode", self.mode, ("library", "llm"))
        _check_choice("principles", "placement", self.placement, PLACEMENTS)
        from selfsteer.principles.library import resolve_template

        try:
            resolve_template(self.system_template)
        except ValueError as exc:
            raise ConfigError(f"principles.system_template={exc}") from None
        if not 0 <= self.max_unknown_share <= 1:
            raise ConfigError(f"principles.max_unknown_share={self.max_unknown_share!r} must be in [0, 1]")
        _check_positive("principles", "num_dimensions", self.num_dimensions)
        if not 0 <= self.concision_prob <= 1:
            raise ConfigError(f"principles.concision_prob={self.concision_prob!r} must be in [0, 1]")


@dataclass(frozen=True)
class LoraConfig:
    """`model.lora`: train a LoRA adapter (peft) on a frozen base instead of every weight. Only the
    adapter is trained, checkpointed and synced to the engines (docs/guide/lora.md)."""

    enabled: bool = False  # on: a LoRA adapter trains, the base stays frozen (off: full fine-tuning)
    rank: int = 16  # r: the adapter matrices' inner size
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input; 0 keeps training and scoring deterministic
    # Module names (peft target_modules); None: the architecture's attention and MLP projections
    # (selfsteer.training.lora.ARCH_TARGETS), or every linear layer but the head for other architectures.
    target_modules: Optional[tuple[str, ...]] = None

    def __post_init__(self):
        _check_positive("model.lora", "rank", self.rank)
        _check_positive("model.lora", "alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.lora.dropout={self.dropout!r} must be in [0, 1)")
        if self.target_modules is not None and (not self.target_modules or not all(self.target_modules)):
            raise ConfigError(f"model.lora.target_modules={list(self.target_modules)!r} must name at least one "
                              "module (e.g. [q_proj, v_proj]), or be left unset for the architecture's default")

"""Typed run configuration: frozen dataclasses, loaded from YAML with dotted CLI overrides.

OmegaConf merges the YAML file and `key=value` overrides onto the dataclass schema, so an
unknown key or a wrong type fails here, before any Ray actor starts, naming key and file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsteer.config.checks import ALGOS, check_run  # noqa: F401  (ALGOS re-exported)
from selfsteer.config.sections import (  # noqa: F401  (re-exported: `from selfsteer.config.schema import ...`)
    ConfigError, EvalConfig, LLMPrincipleConfig, LoraConfig, PairsConfig, PrincipleConfig, SelfContrastConfig, SipoConfig, SepoConfig, SignalConfig, TaskConfig, _check_choice, _check_finite, _check_positive, _key,
)


@dataclass(frozen=True)
class ToyModelConfig:
    """The tiny Llama model built locally when `model.policy` is "toy" (see selfsteer.toy)."""

    hidden_size: int = 64  # width of the toy Llama (the alignment task's start model uses 128)
    num_layers: int = 2  # decoder layers
    num_heads: int = 4  # attention heads (vLLM CPU kernels need head size >= 32)
    num_kv_heads: int = 2  # grouped-query KV heads, as in the real models the toy stands in for
    intermediate_size: int = 128  # SwiGLU MLP width
    max_position_embeddings: int = 512  # context length: prompt plus response tokens
    tie_word_embeddings: bool = True  # one embedding/lm_head tensor, as small instruct models ship
    seed: int = 0  # weight init (and the task model's SFT) seed: the same seed builds the same model


@dataclass(frozen=True)
class ModelConfig:
    """Which weights play which role. Paths are local HF directories; "toy" builds the toy model,
    "task" the alignment task's SFT start model (see `task`)."""

    policy: str = "toy"  # the model trained: a local HF directory, toy or task
    # None: the reference is a frozen copy of the policy the run started from (docs/concepts/sso.md §1).
    reference: Optional[str] = None
    dtype: str = "float32"  # float32 | bfloat16 | float16
    trust_remote_code: bool = False  # run a model repository's own Python code; off unless you trust it
    toy: ToyModelConfig = field(default_factory=ToyModelConfig)
    cache_dir: Optional[str] = None  # where the toy model is cached; default ~/.cache/selfsteer
    lora: LoraConfig = field(default_factory=LoraConfig)  # off: full fine-tuning

    def __post_init__(self):
        _check_choice("model", "dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass(frozen=True)
class DataConfig:
    """Prompt source: a local json/jsonl/parquet file read through `datasets`, or "toy"."""

    prompts: str = "toy"  # a local .json/.jsonl/.parquet file, toy (built-in toy prompts) or task
    prompt_field: str = "prompt"  # the record field holding the prompt text
    id_field: str = "uuid"  # optional per record; the row index is used where absent
    prompts_per_round: int = 8  # prompts drawn per round (the cursor is checkpointed, so a resume draws the same)
    shuffle: bool = True  # shuffle the prompts once per pass, seeded by `seed`
    # Prompts whose chat-templated context exceeds this many tokens are skipped and counted.
    max_prompt_tokens: int = 256

    def __post_init__(self):
        _check_positive("data", "prompts_per_round", self.prompts_per_round)
        _check_positive("data", "max_prompt_tokens", self.max_prompt_tokens)


@dataclass(frozen=True)
class SamplingConfig:
    """SSO sampling (docs/concepts/sso.md §7): T 0.7, top_p 0.8 for y+, y-, y^o; max_new_tokens is capped by
    context size."""

    temperature: float = 0.7  # sampling temperature for y+, y- (and y^o unless raw_greedy); 0 is greedy
    top_p: float = 0.8  # nucleus sampling mass
    max_new_tokens: int = 2048  # response length cap
    raw_greedy: bool = False  # v2 samples y^o greedily

    def __post_init__(self):
        _check_positive("sampling", "temperature", self.temperature, allow_zero=True)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p={self.top_p!r} must be in (0, 1]")
        _check_positive("sampling", "max_new_tokens", self.max_new_tokens)


@dataclass(frozen=True)
class RolloutConfig:
    backend: str = "hf"  # hf | vllm | auto | hf_mod (HF holding a second policy: SIPO's MOD decoding)
    num_engines: int = 2  # rollout engine actors; `selfsteer scale` resizes the pool between rounds
    num_cpus: float = 1.0  # Ray CPUs per engine
    num_gpus: float = 0.0  # Ray GPUs per engine (per tensor-parallel worker)
    tensor_parallel_size: int = 1  # vLLM: GPUs per engine (one sync rank per worker)
    device: str = "auto"  # auto | cpu | cuda
    max_batch_size: int = 64  # requests per generate() call inside one engine
    # False: engines keep the start weights, so every round's pairs come from the start model
    # (offline SSO; with loss.use_w/use_g off and base dpo this is RLCD-style DPO).
    update_weights: bool = True
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # vLLM engine settings (the HF backend ignores them).
    gpu_memory_utilization: float = 0.9  # share of each engine GPU vLLM takes for weights + KV cache
    enforce_eager: Optional[bool] = None  # None: eager on CPU (compiling costs ~25 s a start), CUDA graphs on GPU
    max_model_len: Optional[int] = None  # None: the model's context size; lower it to fit the KV cache

    def __post_init__(self):
        _check_choice("rollout", "backend", self.backend, ("hf", "hf_mod", "vllm", "auto"))
        _check_positive("rollout", "num_engines", self.num_engines)
        _check_positive("rollout", "tensor_parallel_size", self.tensor_parallel_size)
        _check_positive("rollout", "max_batch_size", self.max_batch_size)
        _check_choice("rollout", "device", self.device, ("auto", "cpu", "cuda"))
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"rollout.gpu_memory_utilization={self.gpu_memory_utilization!r} must be in (0, 1]")
        if self.max_model_len is not None:
            _check_positive("rollout", "max_model_len", self.max_model_len)
        _check_positive("rollout", "num_gpus", self.num_gpus, allow_zero=True)
        if self.tensor_parallel_size > 1 and self.num_gpus and self.num_gpus != int(self.num_gpus):
            raise ConfigError(f"rollout.num_gpus={self.num_gpus!r} with rollout.tensor_parallel_size="
                              f"{self.tensor_parallel_size}: each tensor-parallel worker needs a whole GPU of its "
                              f"own (num_gpus is per worker); use rollout.num_gpus=1")

    def vllm_args(self) -> dict:
        """The settings `vllm.LLM` takes as they are; unset ones are left to vLLM or the backend."""
        args = {"gpu_memory_utilization": self.gpu_memory_utilization, "enforce_eager": self.enforce_eager,
                "max_model_len": self.max_model_len}
        return {k: v for k, v in args.items() if v is not None}


@dataclass(frozen=True)
class ReferenceConfig:
    num_cpus: float = 1.0  # Ray CPUs per reference actor
    num_gpus: float = 0.0  # Ray GPUs per reference actor
    device: str = "auto"  # auto (cuda when the actor has a GPU) | cpu | cuda
    micro_batch_size: int = 16  # sequences per forward pass
    packing: bool = True  # shared contexts once, several sequences per row; checked against padded rows at start
    # 0: the start model, fixed for the whole run (the spec). k: after every k-th round's sync the
    # reference takes the policy's weights, so the loss's anchor (and pairs.filter) follows the policy.
    refresh_every: int = 0
    # Data-parallel reference: each call's rows are dealt out to this many actors (each with
    # num_cpus/num_gpus above), contexts kept together, results in request order.
    num_actors: int = 1
    # actor: ReferenceModel actor(s) holding a copy of the start model. trainer: every trainer rank
    # holds the start model frozen (under ZeRO-3 a 1/N share, its forward gathering layer by layer)
    # and scores its share of the rows; no reference GPU. adapter_off (needs model.lora.enabled): the
    # trainer ranks score with the adapter switched off; no second model.
    mode: str = "actor"

    def __post_init__(self):
        _check_choice("reference", "mode", self.mode, ("actor", "trainer", "adapter_off"))
        _check_choice("reference", "device", self.device, ("auto", "cpu", "cuda"))
        _check_positive("reference", "refresh_every", self.refresh_every, allow_zero=True)
        _check_positive("reference", "num_actors", self.num_actors)
        _check_positive("reference", "micro_batch_size", self.micro_batch_size)


@dataclass(frozen=True)
class LossConfig:
    """SSO loss settings (docs/concepts/sso.md §5); defaults are the paper's online run (docs/concepts/sso.md §3)."""

    variant: str = "v1"  # v1: the paper's online loss W*(L_b + G); v2: AutoAlign's (no bare-prompt pair)
    base: str = "ipo"  # ipo (on per-token means) | dpo (on sums): the base preference loss
    beta: float = 0.2  # base beta, also inside the G terms
    g_beta: float = 0.1  # v1: weight of G (not a beta inside it)
    w_alpha: float = 0.66  # v1: W's mix of A(y+|x) and A(y-|x) (the paper's script: 0.66)
    use_w: bool = True  # v1: multiply by W (larger when y+/y- are unlikely on the bare prompt)
    use_g: bool = True  # v1: add the principle-context pairs G
    sft_gamma: float = 0.1  # v2: weight of the SFT term

    def __post_init__(self):
        _check_choice("loss", "variant", self.variant, ("v1", "v2"))
        _check_choice("loss", "base", self.base, ("ipo", "dpo"))
        _check_positive("loss", "beta", self.beta)
        for name in ("g_beta", "w_alpha", "sft_gamma"):
            _check_finite("loss", name, getattr(self, name))


@dataclass(frozen=True)
class TrainerConfig:
    backend: str = "deepspeed"  # deepspeed | torch (plain torch DDP)
    num_ranks: int = 2  # trainer processes (data-parallel / ZeRO ranks)
    zero_stage: int = 3  # DeepSpeed ZeRO stage 0-3 (the deepspeed backend only)
    num_cpus: float = 1.0  # Ray CPUs per rank
    num_gpus: float = 0.0  # Ray GPUs per rank
    device: str = "auto"  # auto (cuda when the rank has a GPU) | cpu | cuda
    dist_backend: str = "auto"  # auto (nccl on cuda, gloo on cpu) | gloo | nccl
    # The ranks' own process group (DeepSpeed's all-gathers/reduce-scatters): a collective waiting
    # longer fails the rank (on NCCL its watchdog ends the process). Not sync.timeout_s: a first
    # ZeRO-3 step or a long round can legitimately outlast a stalled weight sync's limit.
    dist_timeout_s: float = 1800.0
    lr: float = 5e-7  # peak learning rate (the paper: 5e-7; a >50M model above 1e-5 warns at start)
    weight_decay: float = 0.1  # AdamW weight decay
    adam_betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas (the paper's 0.9, 0.95)
    lr_scheduler: str = "cosine"  # cosine | constant (over the whole run's steps)
    # `--resume rounds=N` past the run's planned rounds: restart = the added rounds get their own
    # warmup + decay from trainer.lr; keep_end = the rate stays where the old schedule ended (0 for cosine).
    extend_schedule: str = "restart"
    warmup_ratio: float = 0.1  # share of the schedule's steps spent warming up
    micro_batch_size: int = 1  # triples per rank per forward/backward
    grad_accum: int = 16  # micro-batches per optimizer step
    epochs_per_round: int = 1  # passes over a round's pairs
    grad_clip: float = 1.0  # gradient-norm clip; 0: none
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    # All (response, context) rows of a micro-batch go through one forward pass; packing runs each
    # distinct context once with all its responses, several per row under a 4D mask (no padding
    # waste), after checking at start that the model scores packed rows as it scores padded ones.
    packing: bool = True

    def __post_init__(self):
        _check_choice("trainer", "backend", self.backend, ("deepspeed", "torch"))
        _check_positive("trainer", "num_ranks", self.num_ranks)
        _check_choice("trainer", "zero_stage", self.zero_stage, (0, 1, 2, 3))
        _check_choice("trainer", "device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("trainer", "dist_backend", self.dist_backend, ("auto", "gloo", "nccl"))
        _check_positive("trainer", "dist_timeout_s", self.dist_timeout_s)
        _check_choice("trainer", "lr_scheduler", self.lr_scheduler, ("cosine", "constant"))
        _check_choice("trainer", "extend_schedule", self.extend_schedule, ("restart", "keep_end"))
        _check_positive("trainer", "lr", self.lr)
        _check_positive("trainer", "micro_batch_size", self.micro_batch_size)
        _check_positive("trainer", "grad_accum", self.grad_accum)
        _check_positive("trainer", "epochs_per_round", self.epochs_per_round)
        _check_positive("trainer", "grad_clip", self.grad_clip, allow_zero=True)  # 0: no clipping
        _check_positive("trainer", "weight_decay", self.weight_decay, allow_zero=True)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"trainer.warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")


@dataclass(frozen=True)
class SyncConfig:
    method: str = "collective"  # collective (gloo/nccl broadcast) | object_store
    bucket_mb: float = 256.0  # flat bucket size per broadcast (CPU shared memory: 64 suits; CUDA IPC: 256)
    timeout_s: float = 600.0  # a sync peer that does not join or stalls fails the sync after this long
    # Weight checksums, trainer vs receivers: "first" checks a run's first sync, any sync after an
    # engine restart or a pool change, and the first copy into each other actor (a refreshing
    # reference); "always" every one; "never" none. true/false (older configs) mean always/never.
    verify: str = "first"

    def __post_init__(self):
        legacy = {"true": "always", "false": "never"}.get(str(self.verify).lower())
        if legacy:
            object.__setattr__(self, "verify", legacy)
        _check_choice("sync", "verify", self.verify, ("first", "always", "never"))
        _check_choice("sync", "method", self.method, ("collective", "object_store"))
        _check_positive("sync", "bucket_mb", self.bucket_mb)
        _check_positive("sync", "timeout_s", self.timeout_s)


@dataclass(frozen=True)
class RayConfig:
    address: Optional[str] = None  # None: start Ray in-process; "auto": attach to a cluster
    num_cpus: Optional[int] = None  # only for an in-process Ray
    dashboard_host: str = "127.0.0.1"  # unused: the in-process Ray starts without a dashboard and binds loopback
    torch_threads: int = 1  # intra-op threads per actor on CPU; 2 cores are shared by all roles
    # Upper bound on any single remote call (generation, scoring, a training round): a stalled
    # actor becomes an error naming it instead of a silent hang.
    call_timeout_s: float = 1800.0
    startup_timeout_s: float = 1800.0  # actor start-up: model loading, DeepSpeed init (may compile)
    # Stateless roles (rollout engines, reference, principle generator) are restarted by Ray this
    # many times; an engine is re-synced and its requests re-issued. Trainer ranks are not restarted.
    max_restarts: int = 3

    def __post_init__(self):
        _check_positive("ray", "call_timeout_s", self.call_timeout_s)
        _check_positive("ray", "startup_timeout_s", self.startup_timeout_s)
        if self.num_cpus is not None:
            _check_positive("ray", "num_cpus", self.num_cpus)
        if self.max_restarts < 0:  # Ray's -1 (no limit) too: the driver re-issues a call at most max_restarts times
            raise ConfigError(f"ray.max_restarts={self.max_restarts!r} must be >= 0 (-1, Ray's 'no limit', is not supported)")


@dataclass(frozen=True)
class RunConfig:
    algo: str = "sso"  # sso | dpo | self_contrast | sepo | sipo: which method's rounds run
    rounds: int = 3  # online rounds (extend a finished run with --resume rounds=N)
    seed: int = 0  # seeds prompt order, principle draws, sampling and the toy model
    output_dir: str = "runs/sso"  # the run directory; an existing run there is refused without --resume/--overwrite
    save_every: int = 1  # HF checkpoint every N rounds (the last round is always saved)
    # Resumable trainer state (optimizer included) every N rounds and at the last round; --resume
    # goes back to the last round with one and re-does the rounds after it (exactly).
    save_state_every: int = 1
    # One-step-off: round r+1 samples on the engines while round r trains, so its pairs come from
    # weights one round stale (recorded per triple as `staleness`). False: strictly on-policy.
    async_rounds: bool = False
    # separate: each role on its own devices, weights by broadcast. colocated: trainer ranks,
    # reference and engines share the devices; engines sleep while the trainer trains and take
    # weights through shared memory (CPU) or CUDA IPC handles (GPU).
    placement: str = "separate"
    tensorboard: bool = True  # write TensorBoard event files under output_dir/tensorboard
    # transformers'/datasets' own progress bars (loading weights, writing shards); off keeps the
    # round lines readable, selfsteer's own phase bars and lines stay (runtime.quiet_libraries).
    library_progress_bars: bool = False
    wandb_project: Optional[str] = None  # also log to this Weights & Biases project (needs the wandb extra)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    principles: PrincipleConfig = field(default_factory=PrincipleConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    self_contrast: SelfContrastConfig = field(default_factory=SelfContrastConfig)
    sepo: SepoConfig = field(default_factory=SepoConfig)
    sipo: SipoConfig = field(default_factory=SipoConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self):
        check_run(self)


def load_config(path: Optional[str | Path] = None, overrides: tuple[str, ...] | list[str] = (),
                forced: tuple[str, ...] | list[str] = ()) -> RunConfig:
    """Load `path` (YAML) onto the RunConfig schema, then apply dotted `key=value` overrides.

    `forced` overrides come last and from the caller, not the user (the Ray job attaches to its
    cluster with them): an error message names the user's file and overrides only.

    Raises:
        ConfigError: unknown key, wrong type or invalid value; the message names key and source.
    """
    schema = OmegaConf.structured(RunConfig)
    source = "defaults"
    try:
        if path is not None:
            source = str(path)
            if not Path(path).is_file():
                raise ConfigError(f"config file not found: {path}")
            try:
                loaded = OmegaConf.load(path)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
            if not isinstance(loaded, DictConfig):
                raise ConfigError(f"{path}: the top level must be a mapping of sections, got a {type(loaded).__name__}")
            schema = OmegaConf.merge(schema, loaded)
        if overrides:
            source = f"{source} with command-line overrides {list(overrides)}"
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"override {bad[0]!r} must look like key=value (e.g. rounds=5)")
            schema = OmegaConf.merge(schema, OmegaConf.from_dotlist(list(overrides)))
        if forced:
            schema = OmegaConf.merge(schema, OmegaConf.from_dotlist(list(forced)))
        return OmegaConf.to_object(schema)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"invalid config in {source}: key {key!r}: {first_line}") from None
    except ConfigError as exc:
        if source not in str(exc) and not str(exc).startswith("config file"):
            raise ConfigError(f"invalid config in {source}: {exc}") from None
        raise


def to_dict(cfg: RunConfig) -> dict:
    """Plain dict (for run directories, TensorBoard hparams and checkpoints)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    OmegaConf.save(OmegaConf.structured(cfg), str(path))

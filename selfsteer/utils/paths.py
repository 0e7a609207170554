"""The cache root and the local-model check, each spelled once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def cache_root(configured: Optional[str | Path] = None) -> Path:
    """Where built models are cached: `model.cache_dir` if set, else $SELFSTEER_CACHE, else ~/.cache/selfsteer."""
    if configured:
        return Path(configured)
    return Path(os.environ.get("SELFSTEER_CACHE", Path.home() / ".cache" / "selfsteer"))


def is_hf_model(path: str | Path) -> bool:
    """A local Hugging Face model directory (one with a config.json); hub names are never fetched."""
    return (Path(path) / "config.json").is_file()


def require_hf_model(path: str | Path, what: str) -> str:
    """`path` if it is a local HF model directory, else FileNotFoundError naming `what` (the key or flag)."""
    if not is_hf_model(path):
        raise FileNotFoundError(f"{what}={str(path)!r} is not a local HF model directory (no config.json)")
    return str(path)

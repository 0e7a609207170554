"""Checks of a local HF model directory before Ray starts: what an actor would otherwise find a
minute later, as a traceback. Reads config.json, the safetensors headers and, for a directory with
only PyTorch pickles, unpickles them with `torch.load(weights_only=True)` (memory-mapped, no
tensor data read), so a file that needs arbitrary code to load is refused here, unrun. Layer rule: no import
of `preflight` here (it imports this module); problems come back as text.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

from selfsteer.utils.model_dir import config_problem, index_problem
from selfsteer.utils.paths import is_hf_model


def model_dir_problem(key: str, path: str, trust_remote_code: bool = False) -> str | None:
    """One line naming `key`, the file and the problem, or None when `path` is a loadable model.

    Checks: config.json as eval checks it (`utils.model_dir.config_problem`: a JSON mapping with a
    `model_type` transformers knows, or `auto_map` with trust_remote_code), the safetensors index
    likewise (`index_problem`), and weights are there: complete safetensors files, or PyTorch
    `*.bin` files that load with weights_only. The weight files themselves are checked here, not by
    eval's safe_open: this reads only the header (and refuses pickles that need code to load).
    """
    where = Path(path)
    if not is_hf_model(where):
        return f"{key}={path!r} is not a local HF model directory (no config.json)"
    problem = config_problem(where / "config.json", trust_remote_code) or weights_problem(where)
    return f"{key}: {problem}" if problem else None


def weights_problem(model_dir: Path) -> str | None:
    """Why the directory's weights cannot be loaded safely, or None when they can."""
    safetensors = sorted(model_dir.glob("*.safetensors"))
    problem = index_problem(model_dir)
    if problem:
        return problem
    for file in safetensors:
        problem = safetensors_problem(file)
        if problem:
            return problem
    if safetensors:
        return None
    pickles = sorted(model_dir.glob("*.bin"))
    if not pickles:
        return (f"{model_dir} holds no weights (model.safetensors, model-*.safetensors or pytorch_model*.bin); "
                "copy the model's weight files there")
    for file in pickles:
        problem = pickle_problem(file)
        if problem:
            return problem
    return None


def safetensors_problem(file: Path) -> str | None:
    """A truncated or non-safetensors file, from its header alone (8-byte length, JSON, data offsets)."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > size - 8:
                raise ValueError(f"header length {length} exceeds the file")
            header = json.loads(fh.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"{file} is not a safetensors file ({type(exc).__name__}: {exc})"
    if 8 + length + end != size:
        return (f"{file} is truncated or padded: its header describes {8 + length + end:,} bytes, the file has "
                f"{size:,}; copy it again")
    return None


def pickle_problem(file: Path) -> str | None:
    """A PyTorch pickle that needs more than tensors to load (code could run) is refused, named."""
    import torch

    try:
        try:
            torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            torch.load(file, map_location="cpu", weights_only=True)  # the legacy (non-zip) format cannot be mapped
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"{file} was refused: it needs arbitrary unpickling to load, which can run code "
                f"({first[:200]}); only safetensors or plain tensor pickles are loaded. Use the model's "
                "safetensors files")
    except Exception as exc:  # truncated zip, not a pickle at all: torch raises several types
        return f"{file} does not load as PyTorch weights ({type(exc).__name__}: {str(exc)[:200]})"
    return None

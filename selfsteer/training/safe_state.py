"""Trainer state is read without arbitrary unpickling (issue #26 item 7).

DeepSpeed loads its checkpoint files with `torch.load(weights_only=False)`, so an object planted in
`trainer_state/round_NNNN/*.pt` (the run directory often sits on shared storage) would run its code
on `--resume`. Here every file is loaded weights-only, with the exact allow-list of the few plain
DeepSpeed classes its files hold, and a file that needs anything else is refused by name before
Ray starts (`check_state_dir`) and again where it is loaded (`SafeCheckpointEngine`).
"""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path

import torch

# What DeepSpeed 0.19's model/optimizer state files hold beyond torch's weights-only set, found by
# saving ZeRO 0-3 in fp32/bf16 and listing `torch.serialization.get_unsafe_globals_in_checkpoint`.
# Each is a plain data class (a dataclass, an int Enum, loss-scaler numbers) restored from its
# fields; none runs code of the file's choosing. DynamicLossScaler is what fp16 saves (GPU only).
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


class UnsafeStateError(ValueError):
    """A trainer-state file that cannot be loaded weights-only; the message names the file."""


def unsafe_globals(path: Path) -> list[str]:
    """Globals `path` needs beyond torch's weights-only set and DEEPSPEED_GLOBALS (scans the
    pickle's opcodes without executing it)."""
    if not zipfile.is_zipfile(path):
        raise UnsafeStateError(f"trainer state file {path} is not a torch zip checkpoint; refusing to unpickle it")
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # a damaged archive: torch names no single error type
        raise UnsafeStateError(f"trainer state file {path} is unreadable: {exc}") from None
    return [name for name in found if name not in DEEPSPEED_GLOBALS]


def check_state_dir(directory: Path) -> None:
    """Refuse the first `*.pt` under `directory` that would need arbitrary unpickling."""
    for path in sorted(Path(directory).rglob("*.pt")):
        extra = unsafe_globals(path)
        if extra:
            raise UnsafeStateError(f"trainer state file {path} needs arbitrary unpickling ({', '.join(extra)}); "
                                   f"refusing to load it: a trainer state holds only tensors and DeepSpeed's own "
                                   f"state, so this file was changed or planted")


def allowed_classes() -> list[type]:
    """DEEPSPEED_GLOBALS as classes, for torch.serialization.safe_globals (imports DeepSpeed)."""
    classes = []
    for name in DEEPSPEED_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            classes.append(getattr(importlib.import_module(module), attr))
        except ImportError:  # no DeepSpeed (trainer.backend=torch): its classes cannot be in a valid file
            pass
    return classes


def safe_load(path: str, map_location=None):
    """torch.load weights-only with DEEPSPEED_GLOBALS allowed; anything else raises UnsafeStateError."""
    import pickle

    with torch.serialization.safe_globals(allowed_classes()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsafeStateError(f"trainer state file {path} needs arbitrary unpickling; refusing to load "
                                   f"it ({first})") from None


def make_safe_checkpoint_engine(config_params):
    """DeepSpeed's torch checkpoint engine with a weights-only `load` (saving is unchanged)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return safe_load(path, map_location)

    return SafeCheckpointEngine(config_params)

"""ZeRO-3 loading with no gather: each rank reads only its own slice of every parameter.

transformers' ZeRO-3 loader builds the model under `zero.Init`, then for each module gathers the
full parameters onto every rank, lets rank 0 copy the checkpoint in and re-partitions by broadcast
(and `from_config` gathers each module once more to initialise weights that are then overwritten).
Every rank therefore holds each layer whole once, and twice over gloo, whose all_gather copies
(issue 23: a rank's load peak was 0.64x the model on the CPU twin). Here the model is built
partitioned with weight init off, and every rank copies the elements of its partition straight
from the memory-mapped safetensors (the rows that cover its range, nothing more): no gather, no
rank ever holding a parameter whole beyond the one module `zero.Init` is constructing (which it
broadcasts in place from rank 0 before partitioning, as under transformers' loader).
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def checkpoint_files(model_path: str) -> dict[str, str] | None:
    """Tensor name -> safetensors file in a local HF checkpoint dir; None when it has none."""
    index = os.path.join(model_path, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as fh:
            weight_map = json.load(fh)["weight_map"]
        return {name: os.path.join(model_path, f) for name, f in weight_map.items()}
    single = os.path.join(model_path, SINGLE_FILE)
    if os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="pt") as fh:
            return {name: single for name in fh.keys()}
    return None


def rows_for_range(shape: tuple[int, ...], start: int, end: int) -> tuple[int, int, int]:
    """The leading-dim rows [r0, r1) that cover flat elements [start, end) of a tensor of `shape`,
    and the offset of `start` inside the first row. A 0-d or 1-d tensor has one-element rows."""
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    r0, r1 = start // row, -(-end // row)
    return r0, r1, start - r0 * row


def read_partition(fh, name: str, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
    """Flat elements [start, end) of tensor `name` in an open safetensors file, reading only the
    rows that hold them."""
    slice_ = fh.get_slice(name)
    shape = tuple(slice_.get_shape())
    if not shape:
        return fh.get_tensor(name).reshape(-1)[start:end].to(dtype)
    r0, r1, offset = rows_for_range(shape, start, end)
    rows = slice_[r0:r1]
    return rows.reshape(-1)[offset:offset + (end - start)].to(dtype)


@contextmanager
def _no_gathered_init():
    """transformers' `from_config` under ZeRO-3 builds with `zero.Init` and weight init off, then
    re-initialises every module by gathering it to rank 0 (`initialize_weights_zero3`). The values
    come from the checkpoint here, so that pass (a gather of the whole model) is skipped."""
    import transformers.integrations.deepspeed as ds_integration

    original = getattr(ds_integration, "initialize_weights_zero3", None)
    if original is None:  # a transformers without the pass
        yield
        return
    ds_integration.initialize_weights_zero3 = lambda model: None
    try:
        yield
    finally:
        ds_integration.initialize_weights_zero3 = original


def build_partitioned(model_path: str, dtype: torch.dtype, *, trust_remote_code: bool = False,
                      **model_kwargs) -> torch.nn.Module:
    """The model's skeleton built by transformers under `zero.Init` (the HfDeepSpeedConfig from
    `partitioned_loading` must be alive), each module partitioned as it is built, weights not
    initialised, embeddings tied as the config says. Values come from `load_partitions`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with _no_gathered_init():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 **model_kwargs)
    model.config.name_or_path = model_path
    return model


def load_partitions(model: torch.nn.Module, files: dict[str, str]) -> int:
    """Copy each rank's share of every parameter from the checkpoint into `ds_tensor`; returns the
    number of elements this rank read. Tied parameters appear once (named_parameters dedups)."""
    import torch.distributed as dist
    from safetensors import safe_open

    params = dict(model.named_parameters())
    missing = sorted(name for name in params if name not in files)
    if missing:
        raise KeyError(f"checkpoint has no tensor for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    by_file: dict[str, list[str]] = {}
    for name in params:
        by_file.setdefault(files[name], []).append(name)
    read = 0
    with torch.no_grad():
        for path, names in by_file.items():
            with safe_open(path, framework="pt") as fh:
                for name in names:
                    param = params[name]
                    part = param.ds_tensor
                    size = part.ds_numel
                    start = size * dist.get_rank(group=param.ds_process_group)
                    end = min(start + size, param.ds_numel)
                    if start >= end:  # this rank's share is all padding
                        continue
                    shape = tuple(fh.get_slice(name).get_shape())
                    if shape != tuple(param.ds_shape):
                        raise ValueError(f"{path}: tensor {name} has shape {shape}, the model expects "
                                         f"{tuple(param.ds_shape)}")
                    part.narrow(0, 0, end - start).copy_(read_partition(fh, name, start, end, part.dtype))
                    read += end - start
        for name, buf in model.named_buffers():  # persistent buffers: small, read whole on every rank
            if name in files:
                with safe_open(files[name], framework="pt") as fh:
                    buf.copy_(fh.get_tensor(name).to(buf.dtype))
    return read


def load_for_training(model_path: str, tc, dtype: torch.dtype, *, trust_remote_code: bool = False, **model_kwargs):
    """A causal LM for a training rank. ZeRO-3 over a safetensors checkpoint: built partitioned and
    read slice by slice (this module's docstring). Otherwise, or where the checkpoint's names do not
    match the model's (weight conversions, .bin files), transformers' `from_pretrained`, under
    `zero.Init` at stage 3. Returns (model, keep, fallback): keep must stay referenced while the
    model is in use (transformers holds the DeepSpeed config weakly); fallback is None or why the
    gather-free path was not taken (the trainer warns and records it: startup/fallback/zero3_sliced_load)."""
    from transformers import AutoModelForCausalLM

    from selfsteer.training.deepspeed_backend import partitioned_loading

    keep = partitioned_loading(tc, dtype) if getattr(tc, "backend", "deepspeed") == "deepspeed" else None
    fallback = None
    if keep is not None:
        files = checkpoint_files(model_path)
        if files is None:
            fallback = f"no safetensors in {model_path}: ZeRO-3 loads through transformers' gathers"
        else:
            model = build_partitioned(model_path, dtype, trust_remote_code=trust_remote_code, **model_kwargs)
            try:
                load_partitions(model, files)
                model.eval()
                return model, keep, None
            except KeyError as err:
                fallback = f"{model_path}: {err.args[0]}; ZeRO-3 loads through transformers' gathers"
                del model
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 **model_kwargs)
    return model, keep, fallback

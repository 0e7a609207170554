"""An HF safetensors checkpoint written one parameter at a time, never from a full copy of the model.

Under ZeRO-3 every rank gathers one parameter (all ranks must take part), the writer copies it
to the host into the current shard, and the shard is written once it is full. What the writer
holds beyond the model is bounded by one shard plus the largest tensor (issue 23: `save_pretrained`
of a gathered state dict held the whole model on every rank). Names, order, dtypes and the
shard index follow `save_pretrained`; a tied output layer is kept once, under the embedding.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_SHARD_BYTES = 5 * 10 ** 9  # save_pretrained's "5GB"


@dataclass
class SaveStats:
    shards: int = 0
    tensors: int = 0
    bytes: int = 0
    peak_held: int = 0  # the most bytes the writer held at once: the shard so far and the tensor in hand
    largest: int = 0


def save_streamed(module: torch.nn.Module, path: str | os.PathLike, *, writer: bool, gather=None,
                  max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> SaveStats:
    """Write `module`'s weights as safetensors shards under `path` (the writer rank only).

    Args:
        module: the HF model (under ZeRO-3 its parameters are partitioned placeholders).
        writer: True on the one rank that writes (rank 0); the others only take part in gathers.
        gather: `gather([param])` -> a context in which the parameter is whole (the training
            backend's full_parameters); None for a plain model.
        max_shard_bytes: a shard is written once the next tensor would take it past this.
    Returns:
        what was written and the most bytes held at once (SaveStats).
    """
    from safetensors.torch import save_file

    gather = gather or (lambda params: nullcontext())
    out, stats = Path(path), SaveStats()
    params = dict(module.named_parameters())  # a tied output layer appears once, under the embedding
    buffers = dict(module.named_buffers())
    shard: dict[str, torch.Tensor] = {}
    held, names, files = 0, {}, []

    def flush():
        nonlocal shard, held
        if shard:
            name = f"shard-{len(files):05d}.tmp"
            if writer:
                save_file(shard, str(out / name), metadata={"format": "pt"})
            files.append((name, list(shard)))
            shard, held = {}, 0

    if writer:
        out.mkdir(parents=True, exist_ok=True)
        for stale in [*out.glob("model*.safetensors"), *out.glob("model.safetensors.index.json")]:
            stale.unlink()  # an earlier save's shards would mix with these
    for name in module.state_dict(keep_vars=True):
        if name in params:
            source, context = params[name], gather([params[name]])
        elif name in buffers:
            source, context = buffers[name], nullcontext()
        else:
            continue  # the tied lm_head: the same tensor as the embedding, saved under its name
        with context:
            if not writer:
                continue
            size = source.numel() * source.element_size()
            if shard and held + size > max_shard_bytes:
                flush()
            stats.peak_held = max(stats.peak_held, held + size)  # the gathered tensor beside the shard so far
            shard[name] = source.detach().to("cpu", copy=True).contiguous()
            held += size
            stats.tensors, stats.bytes, stats.largest = stats.tensors + 1, stats.bytes + size, max(stats.largest, size)
    flush()
    stats.shards = len(files)
    if writer:
        _name_shards(out, files, stats.bytes)
    return stats


def _name_shards(out: Path, files: list[tuple[str, list[str]]], total: int) -> None:
    """save_pretrained's names: model.safetensors alone, else model-0000i-of-0000n plus an index."""
    if len(files) == 1:
        os.replace(out / files[0][0], out / "model.safetensors")
        return
    weight_map = {}
    for i, (tmp, names) in enumerate(files, 1):
        final = f"model-{i:05d}-of-{len(files):05d}.safetensors"
        os.replace(out / tmp, out / final)
        weight_map.update({n: final for n in names})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

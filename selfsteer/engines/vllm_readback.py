"""What a vLLM worker's model computes with, read back under HF names, and what it should hold.

vLLM fuses HF modules into one layer (q/k/v -> qkv_proj, gate/up -> gate_up_proj), shards layers
over tensor-parallel ranks, and on CPU repacks each linear weight for its kernels and frees the
plain tensor. So neither the checkpoint nor `named_parameters()` says what a forward uses. A linear
layer (and the output layer) is read back by what it computes: its own kernel applied to rows of
the identity returns its weight's columns, exactly (each output is one weight times one). Other
parameters (embedding, norms, biases) are the tensors the forward reads.

`expected_parts` is the other half: the slice of a full HF tensor this rank should hold. The
verification of a sync compares the two (`check_loaded`), inside the worker, on its device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PROBE_BYTES = 64 * 2 ** 20  # one kernel call's output at most (the output layer's is rows x vocab)


@dataclass(frozen=True)
class Placement:
    """Where HF tensor `name` lives on this rank: part `part` of `module`'s `leaf` parameter."""

    module: str  # vLLM module path, e.g. model.layers.0.self_attn.qkv_proj
    leaf: str  # "weight" | "bias"
    part: int  # index among the fused parts (0 when not fused)
    parts: tuple[str, ...]  # HF names of all parts, in the fused order


def per_parameter(places) -> list[Placement]:
    """One placement per vLLM parameter (the parts of a fused layer share one)."""
    return list({(p.module, p.leaf): p for p in places}.values())


def shard(full: torch.Tensor, local: int, tp_rank: int, tp_size: int, dim: int = 0) -> torch.Tensor:
    """The `local`-long slice of `full` along `dim` that rank `tp_rank` of `tp_size` holds.

    `full` is cut into n = len/local shards; n == tp_size is a plain split, n < tp_size means each
    shard is replicated on tp_size/n ranks (vLLM's key/value heads when there are fewer than ranks).
    """
    length = full.shape[dim]
    n = length // local
    if n * local != length or n < 1 or tp_size % n:
        raise ValueError(f"cannot shard {length} rows into {local}-row pieces over {tp_size} ranks")
    index = tp_rank * n // tp_size
    return full.narrow(dim, index * local, local)


def split_local(fused: torch.Tensor, local_sizes: list[int], dim: int = 0) -> list[torch.Tensor]:
    return list(torch.split(fused, local_sizes, dim=dim))


def _kind(module) -> str:
    from vllm.model_executor.layers.linear import ColumnParallelLinear, LinearBase, RowParallelLinear
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    if isinstance(module, ParallelLMHead):
        return "head"
    if isinstance(module, VocabParallelEmbedding):
        return "embedding"
    if isinstance(module, RowParallelLinear):
        return "row"
    if isinstance(module, ColumnParallelLinear):
        return "column"
    if isinstance(module, LinearBase):
        return "replicated"
    return "plain"


@torch.no_grad()
def probe_weight(module, rows: int) -> torch.Tensor:
    """The (rows x in) weight a linear or output layer computes with, through its own kernel, a few
    identity rows at a time (the scratch stays under PROBE_BYTES)."""
    weight = module.weight
    width = int(getattr(module, "input_size_per_partition", 0) or getattr(module, "embedding_dim", 0)
                or weight.shape[-1])
    step = max(1, min(width, PROBE_BYTES // max(1, rows * weight.element_size())))
    cols = []
    for start in range(0, width, step):
        n = min(step, width - start)
        eye = torch.zeros(n, width, dtype=weight.dtype, device=weight.device)
        eye[:, start:start + n].fill_diagonal_(1)
        cols.append(module.quant_method.apply(module, eye, bias=None)[:, :rows].T)
    return torch.cat(cols, dim=1)


def _local_sizes(module, kind: str, place: Placement) -> tuple[list[int], int]:
    """Per-part rows this rank holds of `place` ([] when it holds the whole tensor), and the
    dimension tensor parallelism splits."""
    if kind == "row":
        return ([int(module.input_size_per_partition)], 1) if place.leaf == "weight" else ([], 0)
    if kind in ("column", "replicated"):
        sizes = [int(s) for s in module.output_partition_sizes]
        return (sizes if len(sizes) == len(place.parts) else [sum(sizes)]), 0
    if kind in ("embedding", "head"):
        return [int(module.shard_indices.num_org_elements)], 0
    return [], 0


def loaded_parts(model, place: Placement) -> list[torch.Tensor]:
    """What the model computes with now for each HF part of `place`, as this rank holds it."""
    module = model.get_submodule(place.module)
    kind = _kind(module)
    sizes, dim = _local_sizes(module, kind, place)
    if kind in ("column", "row", "replicated", "head") and place.leaf == "weight":
        rows = int(module.output_size_per_partition) if kind == "row" else sum(sizes)
        tensor = probe_weight(module, rows)
    else:
        tensor = getattr(module, place.leaf).detach()
        if kind == "embedding":
            tensor = tensor[:sizes[0]]
    return split_local(tensor, sizes, dim) if len(place.parts) > 1 else [tensor]


def expected_parts(model, place: Placement, full: dict[str, torch.Tensor], tp_rank: int,
                   tp_size: int) -> dict[str, torch.Tensor]:
    """For each part of `place` in `full` (full HF tensors), the slice this rank should hold."""
    module = model.get_submodule(place.module)
    kind = _kind(module)
    sizes, dim = _local_sizes(module, kind, place)
    out = {}
    for i, name in enumerate(place.parts):
        if name not in full:
            continue
        if kind in ("embedding", "head"):
            start = int(module.shard_indices.org_vocab_start_index)
            out[name] = full[name][start:start + sizes[0]]
        else:
            out[name] = shard(full[name], sizes[i], tp_rank, tp_size, dim) if sizes else full[name]
    return out


def check_loaded(model, placements: dict[str, Placement], named: dict[str, torch.Tensor], tp_rank: int,
                 tp_size: int, owner: str) -> None:
    """Raise unless, for every tensor in `named`, the model computes with exactly this rank's slice."""
    for place in per_parameter(placements[n] for n in named):
        got = dict(zip(place.parts, loaded_parts(model, place)))
        for part, expect in expected_parts(model, place, named, tp_rank, tp_size).items():
            have = got[part]
            expect = expect.to(device=have.device, dtype=have.dtype)
            if have.shape != expect.shape or not torch.equal(have, expect):
                diff = (have.float() - expect.float()).abs().max().item() if have.shape == expect.shape else None
                raise RuntimeError(f"{owner}: after loading, the model computes with a {part!r} that differs from "
                                   f"the one it was sent (shape {tuple(have.shape)} vs {tuple(expect.shape)}, "
                                   f"max difference {diff}): the engine would sample from other weights")

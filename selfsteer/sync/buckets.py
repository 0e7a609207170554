"""Weights as fixed-size flat buckets: the plan, packing and unpacking, reusable buffers, checksums.

A bucket holds tensors of one dtype back to back in one flat tensor, so a sync sends one
collective (or one object-store object) per bucket, not per parameter. Both sides of a sync use
this module: the trainer packs, the engines and the reference unpack and `copy_named`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch


@dataclass(frozen=True)
class TensorSlot:
    name: str
    shape: tuple[int, ...]
    offset: int  # elements into the bucket
    numel: int


@dataclass(frozen=True)
class Bucket:
    dtype: str  # e.g. "float32": one dtype per bucket so it packs into one flat tensor
    numel: int
    slots: tuple[TensorSlot, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def nbytes(self) -> int:
        return self.numel * _elem(self.torch_dtype)


# HF modules that vLLM fuses into one layer (in every model selfsteer ships configs for). vLLM's
# reload rebuilds a fused layer from all of its parts at once, so a bucket never splits one.
FUSED_PARTS = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
               "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def fused_unit(name: str) -> str | None:
    """The fused layer (and leaf) an HF parameter belongs to: `l.0.mlp.up_proj.weight` -> `l.0.mlp.gate_up_proj.weight`."""
    *path, leaf = name.split(".")
    if not path or path[-1] not in FUSED_PARTS:
        return None
    return ".".join([*path[:-1], FUSED_PARTS[path[-1]], leaf])


def plan_buckets(named_shapes: Iterable[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int) -> list[Bucket]:
    """Group tensors, in order, into buckets of at most `bucket_bytes`; adjacent parts of one fused
    layer (`fused_unit`) share a bucket, and a tensor or fused layer larger than that gets its own."""
    units: list[list[tuple[str, tuple[int, ...], torch.dtype, int]]] = []
    for name, shape, dtype in named_shapes:
        numel = 1
        for d in shape:
            numel *= int(d)
        entry = (name, tuple(int(d) for d in shape), dtype, numel)
        unit = fused_unit(name)
        last = units[-1][-1] if units else None
        if unit is not None and last is not None and fused_unit(last[0]) == unit and last[2] == dtype:
            units[-1].append(entry)
        else:
            units.append([entry])

    buckets: list[Bucket] = []
    current: list[TensorSlot] = []
    current_dtype, used = None, 0
    for unit in units:
        dtype = unit[0][2]
        size = sum(e[3] for e in unit) * _elem(dtype)
        if current and (dtype != current_dtype or used * _elem(current_dtype) + size > bucket_bytes):
            buckets.append(Bucket(str(current_dtype).replace("torch.", ""), used, tuple(current)))
            current, used = [], 0
        current_dtype = dtype
        for name, shape, _, numel in unit:
            current.append(TensorSlot(name, shape, used, numel))
            used += numel
    if current:
        buckets.append(Bucket(str(current_dtype).replace("torch.", ""), used, tuple(current)))
    return buckets


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class FlatBuffers:
    """Reusable flat bucket buffers per (dtype, slot), so a CPU sync writes into warm pages.

    A fresh CPU buffer of a few MB or more comes straight from mmap, and the first write to each
    of its pages faults: packing into one was 5x slower here (benchmarks/weight_sync.py --profile).
    Two slots let one bucket be packed or loaded while the other is on the wire. On GPU every
    call gets a new tensor: the caching allocator already reuses the block, and keeps it free for
    training in between.
    """

    def __init__(self):
        self._flat: dict[tuple[str, int], torch.Tensor] = {}

    def get(self, bucket: Bucket, device="cpu", slot: int = 0) -> torch.Tensor:
        if torch.device(device).type != "cpu":
            return torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=device)
        flat = self._flat.get((bucket.dtype, slot))
        if flat is None or flat.numel() < bucket.numel:
            flat = self._flat[(bucket.dtype, slot)] = torch.empty(bucket.numel, dtype=bucket.torch_dtype)
        return flat[:bucket.numel]


def pack_bucket(bucket: Bucket, tensors: dict[str, torch.Tensor], device,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Copy the bucket's tensors into one flat tensor (`out` if given, e.g. from `FlatBuffers`)."""
    flat = torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=device) if out is None else out
    for slot in bucket.slots:
        flat[slot.offset:slot.offset + slot.numel].copy_(tensors[slot.name].reshape(-1))
    return flat


def unpack_bucket(bucket: Bucket, flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    for slot in bucket.slots:
        yield slot.name, flat[slot.offset:slot.offset + slot.numel].view(slot.shape)


@torch.no_grad()
def copy_named(module, named_tensors: Iterable[tuple[str, torch.Tensor]], owner: str) -> None:
    """Copy tensors into `module`'s parameters by name (in place: views and tying stay intact)."""
    params = dict(module.named_parameters())
    for name, tensor in named_tensors:
        if name not in params:
            raise KeyError(f"{owner} has no parameter {name!r}")
        params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def load_view(i: int, bucket: Bucket, view: torch.Tensor, load, targets=None) -> torch.Tensor:
    """Put received bucket `i` into the engine: one copy into its flat tensor `targets[i]` (where its
    parameters live), else `load(bucket, view)`. Returns what the engine now holds, to fingerprint."""
    if targets is not None:
        targets[i].copy_(view)
        return targets[i]
    load(bucket, view)
    return view


def fingerprint(flat: torch.Tensor) -> str:
    """Content hash of a bucket's bytes, to verify a sync bit for bit.

    XXH3 (64 bit), hashed in place: it runs at memory speed, where sha256 over a copy ran at a
    fifth of the sync's bandwidth. It guards against a wrong or torn transfer, not an adversary.
    """
    import xxhash

    data = flat.detach().to("cpu").contiguous().view(torch.uint8).numpy()
    return xxhash.xxh3_64_hexdigest(data)

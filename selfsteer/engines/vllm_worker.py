"""The vLLM half that runs in every worker (tensor-parallel rank) process: `WorkerExtension`.

vLLM mixes it into its Worker class (named by dotted path in `worker_extension_cls`, the pattern
of OpenRLHF's vllm_worker_wrap.py). It joins the weight-sync group, receives the buckets, and loads
them through vLLM's own in-place reload path (`model_runner.reload_weights`), which re-runs each
layer's post-load processing (on CPU: the oneDNN/SGL weight packing). The model's plain
`load_weights` after start writes into tensors the CPU kernels no longer read.

The worker keeps no copy of the weights. vLLM's reload materializes a fused layer (qkv_proj,
gate_up_proj) afresh, so every part of it must arrive in one load: the trainer's bucket plan keeps
fused parts together (`sync.buckets.fused_unit`); a load that still splits one (a test loading
k_proj alone, a merged LoRA on q/v) is completed from what the model computes with now, read back
through its kernels (`vllm_readback`), which needs the whole tensor and so one tensor-parallel rank.
Verification reads back the same way, on the worker's device, and compares with what it was sent.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch


class WorkerExtension:
    """Methods added to vLLM's worker class, so they run in every worker (TP rank) process.

    `self` is the vLLM Worker: `self.model_runner`, `self.device` and `self.rank` are its own.
    Method names carry a prefix because vLLM refuses an extension that shadows a worker attribute.
    """

    def selfsteer_init(self, model_path: str) -> None:
        from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

        from selfsteer.engines.vllm_readback import Placement

        model = self.model_runner.get_model()
        self._selfsteer_tied = _tied_lm_head(model)
        self._selfsteer_tp = (get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size())
        names = [n for n in checkpoint_names(Path(model_path)) if not (self._selfsteer_tied and n == "lm_head.weight")]
        packed = getattr(model, "packed_modules_mapping", {}) or {}
        check_fusion_covered(packed)
        self._selfsteer_place = placements(names, packed)
        embed = next((n for n in names if n.endswith("embed_tokens.weight")), None)
        self._selfsteer_head = {embed: Placement("lm_head", "weight", 0, (embed,))} if self._selfsteer_tied and embed else {}
        self._selfsteer_sync = None
        self._selfsteer_buffers = None
        # Every bucket is a partial reload, and vLLM warns about each layer a bucket leaves alone
        # (layerwise: by class name only, so it stays quiet). The in-place reload's "Following weights
        # were not loaded" names the parameters: those of a layer this bucket meant to load are an error.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        self._selfsteer_not_loaded = capture_not_loaded()

    def selfsteer_load_weights(self, named, verify: bool = False) -> None:
        from selfsteer.engines.vllm_readback import check_loaded, loaded_parts, per_parameter

        named = from_bytes(named) if isinstance(named, bytes) else dict(named)
        unknown = [n for n in named if n not in self._selfsteer_place]
        if unknown:
            raise KeyError(f"engine model has no parameter {unknown[0]!r}")
        model = self.model_runner.get_model()
        places = per_parameter(self._selfsteer_place[n] for n in named)
        complete = dict(named)
        for place in places:
            missing = [n for n in place.parts if n not in named]
            if not missing:
                continue
            if self._selfsteer_tp[1] > 1:
                raise RuntimeError(f"vLLM worker {self.rank}: a load holds {sorted(set(place.parts) - set(missing))} "
                                   f"but not {missing}, parts of the fused layer {place.module}; with tensor "
                                   f"parallelism every part must arrive in one load (plan buckets with "
                                   f"selfsteer.sync.buckets.plan_buckets, which keeps them together)")
            complete.update({n: t for n, t in zip(place.parts, loaded_parts(model, place)) if n in missing})
        self._selfsteer_not_loaded.names.clear()
        self.reload_weights(weights_iterator=iter(complete.items()))
        layers = {p.module for p in places}
        missed = unloaded_in(layers, self._selfsteer_not_loaded.names)
        if missed:
            raise RuntimeError(f"vLLM worker {self.rank} did not load {len(missed)} weight(s) it was sent, e.g. "
                               f"{missed[0]!r} (vLLM: 'Following weights were not loaded'); the engine would "
                               f"sample from stale weights")
        head = any(n in named for n in self._selfsteer_head)
        if head:
            # The tied head shares the embedding's storage but is never reloaded itself; on CPU it
            # computes from its own packed copy, which must be rebuilt (a no-op on GPU).
            model.lm_head.quant_method.process_weights_after_loading(model.lm_head)
        if verify:  # vLLM has copied what it loads; `named` (maybe a receive buffer) is still intact
            owner = f"vLLM worker {self.rank}"
            check_loaded(model, self._selfsteer_place, named, *self._selfsteer_tp, owner)
            if head:
                check_loaded(model, self._selfsteer_head, {n: named[n] for n in self._selfsteer_head}, *self._selfsteer_tp,
                             owner + " (tied output layer)")

    def selfsteer_named_weights(self, same_process: bool):
        """The HF-named weights the model computes with (one rank holds them whole: no tensor parallelism)."""
        from selfsteer.engines.vllm_readback import loaded_parts, per_parameter

        if self._selfsteer_tp[1] > 1:
            raise NotImplementedError("reading back HF-named weights from a tensor-parallel vLLM engine: each worker "
                                      "holds a slice (sync verification checks each worker's slice as it loads)")
        if self.rank != 0:
            return None
        model, out = self.model_runner.get_model(), {}
        for place in per_parameter(self._selfsteer_place.values()):
            out.update({n: t.to("cpu", copy=True) for n, t in zip(place.parts, loaded_parts(model, place))})
        return out if same_process else to_bytes(out)

    def selfsteer_init_sync_group(self, host: str, port: int, rank: int, world_size: int, backend: str,
                                  timeout_s: float) -> int:
        from selfsteer.sync.collective import SyncGroup

        if self._selfsteer_sync is not None:
            self._selfsteer_sync.close()
        self._selfsteer_sync = SyncGroup(host, port, rank + self.rank, world_size, backend, timeout_s)
        return rank + self.rank

    def selfsteer_receive_weights(self, buckets: list, verify: bool) -> list[str]:
        from selfsteer.sync.buckets import FlatBuffers, unpack_bucket
        from selfsteer.sync.collective import receive_buckets

        if self._selfsteer_sync is None:
            raise RuntimeError(f"vLLM worker {self.rank}: receive_weights before init_sync_group")
        self._selfsteer_sync.rendezvous()
        device = self.device if self._selfsteer_sync.backend == "nccl" else "cpu"
        self._selfsteer_buffers = self._selfsteer_buffers or FlatBuffers()
        plan = _plan(buckets)
        return receive_buckets(self._selfsteer_sync, plan, self._selfsteer_buffers, device,
                               lambda b, flat: self.selfsteer_load_weights(list(unpack_bucket(b, flat)), verify),
                               verify)


    def selfsteer_receive_local(self, method: str, handle, buckets: list, verify: bool, version: int,
                                timeout_s: float, device_index) -> list[str]:
        """Colocated layout: load every bucket straight from the trainer rank's pool on this node or GPU
        (`shm` or `cuda_ipc`), mapped here in the worker: no copy through the engine's process or host."""
        from selfsteer.sync.buckets import fingerprint, unpack_bucket

        handle = pickle.loads(handle) if isinstance(handle, bytes) else handle
        plan = _plan(buckets)
        fingerprints: list[str] = []

        def load(bucket, view):
            self.selfsteer_load_weights(list(unpack_bucket(bucket, view)), verify)
            if verify:
                fingerprints.append(fingerprint(view))
        if method == "shm":
            from selfsteer.sync.shm import receive_shm

            receive_shm(handle, plan, load, None, version=version, timeout_s=timeout_s)
        else:
            from selfsteer.sync.cuda_ipc import receive_ipc

            receive_ipc(handle, plan, load, None, version=version, timeout_s=timeout_s, device_index=device_index)
        return fingerprints


def _plan(buckets: list):
    """Buckets from their plain form (what crosses vLLM's RPC): (dtype, numel, [(name, shape, offset, numel)])."""
    from selfsteer.sync.buckets import Bucket, TensorSlot

    return [Bucket(dtype, numel, tuple(TensorSlot(n, tuple(shape), off, k) for n, shape, off, k in slots))
            for dtype, numel, slots in buckets]


class _NotLoaded(logging.Handler):
    """Collects the parameter names of vLLM's "Following weights were not loaded" warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.names: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Following weights were not loaded") and record.args:
            self.names.update(str(n) for n in record.args[0])


def capture_not_loaded(logger_name: str = "vllm.model_executor.model_loader.reload.inplace") -> _NotLoaded:
    """Route the in-place reload's warnings into a collector (not the console: every partial reload
    warns about the layers it leaves alone, `unloaded_in` picks the ones that matter)."""
    log = logging.getLogger(logger_name)
    for handler in [h for h in log.handlers if isinstance(h, _NotLoaded)]:
        log.removeHandler(handler)
    handler = _NotLoaded()
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False
    return handler


def unloaded_in(layers: set[str], not_loaded: set[str]) -> list[str]:
    """The not-loaded vLLM parameters that belong to `layers` (the layers a reload was given)."""
    return sorted(n for n in not_loaded if n.rsplit(".", 1)[0] in layers)


def _vllm_layer(hf_name: str, packed: dict[str, str]) -> str:
    """The vLLM layer an HF parameter loads into: `...self_attn.k_proj.weight` -> `...self_attn.qkv_proj`."""
    parts = hf_name.split(".")[:-1]
    if parts and parts[-1] in packed:
        parts[-1] = packed[parts[-1]]
    return ".".join(parts)


def placements(names: list[str], packed: dict[str, list[str]]):
    """Each HF parameter's place in the vLLM model: its layer, and the parts fused into it, in vLLM's order."""
    from selfsteer.engines.vllm_readback import Placement

    part_of = {part: fused for fused, parts in packed.items() for part in parts}
    out = {}
    for name in names:
        *path, leaf = name.split(".")
        if path and path[-1] in part_of and part_of[path[-1]] != path[-1]:
            fused = part_of[path[-1]]
            parts = tuple(".".join([*path[:-1], p, leaf]) for p in packed[fused])
            out[name] = Placement(".".join([*path[:-1], fused]), leaf, parts.index(name), parts)
        else:
            out[name] = Placement(".".join(path), leaf, 0, (name,))
    return out


def check_fusion_covered(packed: dict[str, list[str]]) -> None:
    """The trainer's bucket plan keeps together only the fusions it knows (sync.buckets.FUSED_PARTS):
    a model that fuses other modules would have its layers split across loads."""
    from selfsteer.sync.buckets import FUSED_PARTS

    for fused, parts in packed.items():
        if len(parts) > 1 and (any(p not in FUSED_PARTS for p in parts) or len({FUSED_PARTS[p] for p in parts}) > 1):
            raise ValueError(f"this vLLM model fuses {parts} into {fused}, a fusion the sync's bucket plan does not "
                             f"keep together (selfsteer.sync.buckets.FUSED_PARTS); add it there")


def _tied_lm_head(model) -> bool:
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    return head is not None and embed is not None and getattr(head, "weight", None) is getattr(embed, "weight", 0)


def read_checkpoint(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        return {n: t for f in files for n, t in load_file(f).items()}
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {model_dir}")
    return {n: t for f in bins for n, t in torch.load(f, map_location="cpu", weights_only=True).items()}


def checkpoint_names(model_dir: Path) -> list[str]:
    """The checkpoint's tensor names, from the safetensors headers (no weights read)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return list(read_checkpoint(model_dir))
    names = []
    for f in files:
        with safe_open(str(f), "pt") as handle:
            names.extend(handle.keys())
    return names


def to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()})


def from_bytes(blob: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(blob)

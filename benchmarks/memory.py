"""Trainer-rank memory on CPU twins: measured peak per phase beside the plan's estimate, same code paths.

A random-init Llama-shaped model (default ~0.47B parameters, fp32; no download) is saved as an HF
checkpoint, then two ranks (gloo, DeepSpeed ZeRO-3, as on GPUs with NCCL) run what a trainer rank
runs: load (built under zero.Init, each rank reading its own slices: selfsteer.training.zero3_load), engine
set-up, one training step through selfsteer.algorithms.logprobs, and save_hf's streamed save
(selfsteer.training.streamed_save).

What a rank holds is its anonymous memory (RssAnon, sampled every millisecond; the peak above the
rank's base), compared with selfsteer.plan.memory's terms for the phase (planned()). File-backed
pages (RssFile: every rank memory-maps the checkpoint files while it reads its slices; the kernel drops these
clean pages under pressure) and the total VmHWM are printed beside it. The base is the RSS after
imports and after loading a 1-layer model the same way (lazy modules, DeepSpeed's shm comm op).

    python benchmarks/memory.py                       # ~0.47B: needs ~12 GB RAM, ~8 min on one core
    python benchmarks/memory.py --hidden 512 --layers 8 --intermediate 2048   # a quick run

Only trainer ranks are measured (the engine and reference roles are not). The last lines are
`load peak / full model: X` (issue 23's goal: below 0.6; anonymous memory) and `plan accuracy
ratio: X` (worst measured / planned over phases).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

MIB = 2 ** 20


def _hwm_bytes() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def _rss_bytes() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM back to the current RSS


def _kinds() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("RssAnon", "RssFile", "RssShmem")}


class _Sampler:
    """Polls RssAnon/RssFile/RssShmem every millisecond while a phase runs (torch ops release the GIL)."""

    def __init__(self):
        import threading
        self.peak = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
        self.at_total = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import time
        best = -1
        while not self._stop.is_set():
            k = _kinds()
            for name, v in k.items():
                self.peak[name] = max(self.peak[name], v)
            if sum(k.values()) > best:
                best, self.at_total = sum(k.values()), k
            time.sleep(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _warm_up(tc, out_dir: str) -> None:
    """Load a 1-layer model (main() saved it) through the same path first: the code it pulls in lazily
    (transformers' Llama modules, DeepSpeed's shm comm op, built on first use) is library memory."""
    from selfsteer.training.zero3_load import load_for_training

    load_for_training(os.path.join(out_dir, "warm_up"), tc, torch.float32)
    import gc

    gc.collect()


def _live(backend) -> dict[str, int]:
    """MiB in DeepSpeed's and the optimizer's tensors at a phase's end, one count per storage."""
    opt = backend.engine.optimizer
    seen, out = set(), {}

    def add(name, t):
        if isinstance(t, torch.Tensor) and t.numel():
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                out[name] = out.get(name, 0) + t.untyped_storage().nbytes() // MIB

    for g in getattr(opt, "fp16_partitioned_groups_flat", []):
        add("fp16 flat", g)
    for g in getattr(opt, "fp32_partitioned_groups_flat", []):
        add("fp32 flat", g)
    add("grad flat", getattr(opt, "grad_partitions_flat_buffer", None))
    for b in getattr(opt, "ipg_buckets", {}).values():
        add("ipg bucket", getattr(b, "buffer", None))
    for st in opt.optimizer.state.values():
        for k, v in st.items():
            add(f"adam {k}", v)
    for q in backend.module.parameters():
        add("param data", q.data)
        add("ds_tensor", getattr(q, "ds_tensor", None))
    return out


def _rank(rank: int, world: int, model_dir: str, store: str, out_dir: str, prompt: int, new: int) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", LOCAL_RANK="0", RANK=str(rank), WORLD_SIZE=str(world))
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    import deepspeed

    from selfsteer.algorithms.logprobs import score_sequences
    from selfsteer.config.schema import load_config
    from selfsteer.training.deepspeed_backend import DeepSpeedBackend
    from selfsteer.training.streamed_save import save_streamed
    from selfsteer.training.zero3_load import load_for_training

    deepspeed.init_distributed(dist_backend="gloo")
    tc = load_config(None, ["trainer.backend=deepspeed", "trainer.zero_stage=3", f"trainer.num_ranks={world}",
                            "trainer.micro_batch_size=1", "trainer.grad_accum=1", "trainer.gradient_checkpointing=true"]).trainer
    torch.set_num_threads(1)
    imports = _kinds()
    _warm_up(tc, out_dir)
    dist.barrier()
    base, peaks, kinds, base_kinds = _rss_bytes(), {}, {}, _kinds()

    def phase(name, fn):
        dist.barrier()
        _reset_peak()
        with _Sampler() as sampler:
            result = fn()
        peaks[name] = _hwm_bytes() - base
        kinds[name] = {"peak": sampler.peak, "after": _kinds()}
        return result

    model, keep, why = phase("load", lambda: load_for_training(model_dir, tc, torch.float32))
    if why:
        raise SystemExit(f"rank {rank}: the sliced ZeRO-3 load was not taken: {why}")
    partitions = sum(q.ds_tensor.numel() * q.ds_tensor.element_size() for q in model.parameters())
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    backend = phase("engine", lambda: DeepSpeedBackend(model, tc, total_steps=1, device="cpu", dtype=torch.float32))
    gen = torch.Generator().manual_seed(rank)
    vocab = model.config.vocab_size
    context = torch.randint(4, vocab, (prompt,), generator=gen).tolist()
    responses = [torch.randint(4, vocab, (new,), generator=gen).tolist() for _ in range(2)]

    def step():
        logps, _ = score_sequences(backend.forward, [context, context], responses, pad_id=0, device="cpu",
                                   micro_batch_size=2)
        backend.backward(-logps.mean(), boundary=True)
        backend.step()

    live = {"engine": _live(backend)}
    phase("train", step)
    live["train"] = _live(backend)
    phase("save", lambda: save_streamed(backend.module, os.path.join(out_dir, "saved"), writer=rank == 0,
                                        gather=backend.full_parameters))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"base": base, "peaks": peaks, "kinds": kinds, "base_kinds": base_kinds, "imports": imports,
                                                          "partitions": partitions, "live": live}))
    dist.barrier()
    dist.destroy_process_group()


def planned(shape, world: int, prompt: int, new: int) -> dict[str, dict[str, float]]:
    """selfsteer.plan.memory's terms for the same phases, fp32 (p = 4), as a rank's anonymous host memory.

    CPU-twin terms, named: the reduce bucket that DeepSpeed allocates with torch.empty counts only
    for the pages gradients touch (min(5e8, Ψ) elements; on a GPU all of it is allocated). At load,
    zero.Init broadcasts each module it builds from rank 0 before partitioning it: the other ranks
    write the full tensor (at most the largest), rank 0's stays untouched pages (plan.memory.host_trainer
    counts the largest tensor for every rank). The checkpoint is mmapped (file-backed, droppable
    pages: printed apart, not planned here).
    DeepSpeed 0.19.8 on CPU keeps a separate fp32 master partition although the weights are fp32
    (the plan's K = 8 for fp32 assumes none; `live` shows both flats), and torch's AdamW makes m and
    v at the first step, so the engine phase holds weights, master and gradients only.
    """
    from selfsteer.config.schema import load_config
    from selfsteer.plan import memory as gm

    tc = load_config(None, ["trainer.backend=deepspeed", "trainer.zero_stage=3", f"trainer.num_ranks={world}",
                            "trainer.gradient_checkpointing=true"]).trainer
    p, psi = 4, shape.params
    states = gm.zero_states(psi, p, 3, world)
    states.pop("zero buffers")  # replaced by what the CPU touches (docstring)
    master = {"fp32 master (CPU twin)": p * psi / world}
    gathered = min(psi, gm.ZERO3_MAX_LIVE) * p
    bucket = min(gm.ZERO12_BUCKET, psi) * p
    train = gm.trainer_memory(shape, tc, p, tokens=2 * (prompt + new), split_head=False)
    for k in ("CUDA context", "zero buffers"):
        train.pop(k)
    train.update({**master, "gathered parameters": gathered, "reduce bucket (touched)": bucket})
    largest = gm.largest_tensor(shape, p)
    return {"load": {"weights": states["weights"], "module being built": largest},
            "engine": {"weights": states["weights"], **master, "gradients": states["gradients"]},
            "train": train,
            "save": {**states, **master, "reduce bucket (touched)": bucket,
                     "save shard (writer)": min(gm.HF_SHARD, p * psi), "largest tensor": largest}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--shard-mb", type=int, default=512, help="checkpoint shard size (save_pretrained max_shard_size)")
    args = parser.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    from selfsteer.plan import memory as gm

    config = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64, intermediate_size=args.intermediate,
                         vocab_size=args.vocab, tie_word_embeddings=False, max_position_embeddings=4096)
    with tempfile.TemporaryDirectory(prefix="selfsteer-memory-") as tmp:
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(tmp + "/model", max_shard_size=f"{args.shard_mb}MB")
        tiny = LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=64, vocab_size=64)
        LlamaForCausalLM(tiny).save_pretrained(tmp + "/warm_up")
        shape = gm.model_shape(tmp + "/model")
        full = 4 * shape.params
        world = 2
        mp.spawn(_rank, args=(world, tmp + "/model", tmp + "/store", tmp, args.prompt, args.new), nprocs=world)
        reports = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    plan = planned(shape, world, args.prompt, args.new)
    r0 = reports[0]
    library = sum(r0["base_kinds"].values()) - sum(r0["imports"].values())
    print(f"model: {shape.params / 1e9:.3f} B parameters, fp32 {full / MIB:,.0f} MiB; ZeRO-3 over {world} gloo ranks; "
          f"rows 2 x ({args.prompt}+{args.new}) tokens")
    print(f"base (rank 0): RSS after imports {sum(r0['imports'].values()) / MIB:,.0f} MiB, + library warm-up "
          f"{library / MIB:,.0f} MiB (lazy modules, DeepSpeed's shm comm op: not the model's)")
    print("measured: peak anonymous memory (RssAnon) above base; file: peak file-backed pages (RssFile) above base; "
          "RSS: peak VmHWM above base; after: RssAnon held when the phase ends")
    print(f"{'phase':<7} {'rank0 MiB':>10} {'rank1 MiB':>10} {'file MiB':>9} {'RSS MiB':>8} {'after MiB':>9} {'planned MiB':>12} "
          f"{'ratio':>6}  planned terms (MiB)")
    worst = 1.0  # the ratio farthest from 1 wins
    anon = [{k: r["kinds"][k]["peak"]["RssAnon"] - r["base_kinds"]["RssAnon"] for k in plan} for r in reports]
    for name, terms in plan.items():
        estimate = sum(terms.values())
        measured = max(a[name] for a in anon)
        file = max(r["kinds"][name]["peak"]["RssFile"] - r["base_kinds"]["RssFile"] for r in reports)
        rss = max(r["peaks"][name] for r in reports)
        after = max(r["kinds"][name]["after"]["RssAnon"] - r["base_kinds"]["RssAnon"] for r in reports)
        ratio = measured / estimate
        worst = max(worst, ratio, key=lambda x: abs(x - 1))
        detail = ", ".join(f"{k} {v / MIB:,.0f}" for k, v in terms.items())
        print(f"{name:<7} {anon[0][name] / MIB:>10,.0f} {anon[1][name] / MIB:>10,.0f} {file / MIB:>9,.0f} "
              f"{rss / MIB:>8,.0f} {after / MIB:>9,.0f} {estimate / MIB:>12,.0f} {ratio:>6.2f}  {detail}")
    held = max(r["kinds"]["load"]["after"]["RssAnon"] - r["base_kinds"]["RssAnon"] for r in reports)
    for when in ("engine", "train"):
        print(f"live after {when} (rank 0, MiB): " + ", ".join(f"{k} {v:,}" for k, v in r0["live"][when].items()))
    print(f"after load each rank holds {held / MIB:,.0f} MiB anonymous (its partitions: {r0['partitions'] / MIB:,.0f} MiB)")
    load = max(a["load"] for a in anon) / full
    print(f"load peak / full model: {load:.2f}")
    print(f"plan accuracy ratio: {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

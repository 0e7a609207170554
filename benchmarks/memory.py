"""Trainer-rank memory on CPU twins: measured peak RSS per phase beside the plan's estimate, same code paths.

A random-init Llama-shaped model (default ~0.47B parameters, fp32; no download) is saved as an HF
checkpoint, then two ranks (gloo, DeepSpeed ZeRO-3, as on GPUs with NCCL) run what a trainer rank
runs: load (under zero.Init: selfsteer.training.deepspeed_backend.partitioned_loading), engine
set-up, one training step through selfsteer.algorithms.logprobs, and save_hf's streamed save
(selfsteer.training.streamed_save). Each phase's peak RSS (VmHWM, reset before the phase) above
the rank's RSS after imports is printed beside selfsteer.plan.memory's estimate of the same phase
(host RAM here: on CPU the "device" is the host), and the full model's size.

    python benchmarks/memory.py                       # ~0.47B: needs ~12 GB RAM and minutes on 2 cores
    python benchmarks/memory.py --hidden 512 --layers 8 --intermediate 2048   # a quick run

Only trainer ranks are measured (the engine and reference roles are not). The last lines are
`load peak / full model: X` (issue 23's goal: below 0.6) and `plan accuracy ratio: X` (worst
measured / planned over phases).
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


def _rank(rank: int, world: int, model_dir: str, store: str, out_dir: str, prompt: int, new: int) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", LOCAL_RANK="0", RANK=str(rank), WORLD_SIZE=str(world))
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    import deepspeed
    from transformers import AutoModelForCausalLM

    from selfsteer.algorithms.logprobs import score_sequences
    from selfsteer.config.schema import load_config
    from selfsteer.training.deepspeed_backend import DeepSpeedBackend, partitioned_loading
    from selfsteer.training.streamed_save import save_streamed

    deepspeed.init_distributed(dist_backend="gloo")
    tc = load_config(None, ["trainer.backend=deepspeed", "trainer.zero_stage=3", f"trainer.num_ranks={world}",
                            "trainer.micro_batch_size=1", "trainer.grad_accum=1", "trainer.gradient_checkpointing=true"]).trainer
    torch.set_num_threads(1)
    dist.barrier()
    base, peaks = _rss_bytes(), {}

    def phase(name, fn):
        dist.barrier()
        _reset_peak()
        result = fn()
        peaks[name] = _hwm_bytes() - base
        return result

    keep = partitioned_loading(tc, torch.float32)  # noqa: F841 (transformers holds it weakly)
    model = phase("load", lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
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

    phase("train", step)
    phase("save", lambda: save_streamed(backend.module, os.path.join(out_dir, "saved"), writer=rank == 0,
                                        gather=backend.full_parameters))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"base": base, "peaks": peaks}))
    dist.barrier()
    dist.destroy_process_group()


def planned(shape, world: int, prompt: int, new: int, shard_bytes: float) -> dict[str, float]:
    """selfsteer.plan.memory's terms for the same phases, fp32 (p = 4), as host RAM."""
    from selfsteer.config.schema import load_config
    from selfsteer.plan import memory as gm

    tc = load_config(None, ["trainer.backend=deepspeed", "trainer.zero_stage=3", f"trainer.num_ranks={world}",
                            "trainer.gradient_checkpointing=true"]).trainer
    p, psi = 4, shape.params
    states = gm.zero_states(psi, p, 3, world)
    train = gm.trainer_memory(shape, tc, p, tokens=2 * (prompt + new), split_head=False)
    train.pop("CUDA context")
    shard = min(shard_bytes, p * psi)
    return {"load": p * psi / world + shard, "engine": sum(states.values()),
            "train": sum(train.values()),
            "save": states["weights"] + states["gradients"] + states["optimizer"] + shard + gm.largest_tensor(shape, p)}


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
        shape = gm.model_shape(tmp + "/model")
        full = 4 * shape.params
        world = 2
        mp.spawn(_rank, args=(world, tmp + "/model", tmp + "/store", tmp, args.prompt, args.new), nprocs=world)
        reports = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    plan = planned(shape, world, args.prompt, args.new, args.shard_mb * 1e6)
    print(f"model: {shape.params / 1e9:.3f} B parameters, fp32 {full / MIB:,.0f} MiB; ZeRO-3 over {world} gloo ranks; "
          f"rows 2 x ({args.prompt}+{args.new}) tokens; RSS after imports {reports[0]['base'] / MIB:,.0f} MiB (rank 0)")
    print(f"{'phase':<8} {'rank0 MiB':>10} {'rank1 MiB':>10} {'planned MiB':>12} {'ratio':>7}")
    worst = 1.0  # the ratio farthest from 1 wins
    for name, estimate in plan.items():
        measured = max(r["peaks"][name] for r in reports)
        ratio = measured / estimate
        worst = max(worst, ratio, key=lambda x: abs(x - 1))
        print(f"{name:<8} {reports[0]['peaks'][name] / MIB:>10,.0f} {reports[1]['peaks'][name] / MIB:>10,.0f} "
              f"{estimate / MIB:>12,.0f} {ratio:>7.2f}")
    load = max(r["peaks"]["load"] for r in reports) / full
    print(f"load peak / full model: {load:.2f}")
    print(f"plan accuracy ratio: {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

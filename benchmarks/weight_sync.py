"""Weight-sync bandwidth: one full sync trainer -> rollout engines, vs one in-memory copy of the same bytes.

The sync runs through the product's own path: a real trainer rank actor (torch backend, one rank)
and rollout engine actors (HF by default, `--backend vllm` where vLLM is installed) under Ray, a
`WeightSyncer` that packs flat buckets, broadcasts them over its `SyncGroup` (gloo on CPU) and
loads them into every engine. The baseline, measured in the same run, is a single
`torch.Tensor.copy_` of a buffer as large as the model, with the same thread count as each actor.

    python benchmarks/weight_sync.py                                  # 10m and 100m, 16/64/256 MB
    python benchmarks/weight_sync.py --sizes 10m --bucket-mb 1,16 --engines 2 --profile

GB/s is model bytes / seconds of one `WeightSyncer.sync` (whatever the number of engines).
`--profile` times each stage of a sync alone, in this process (pack, gloo broadcast between two
threads, load into an engine of `--backend`, checksum), to show where the time goes.

What limits it on CPU (2-core AMD EPYC, 2026-11-24; the issue-4 note): pack, load and checksum each
run at 7-15 GB/s and are hidden behind the transfer (bucket i+1 packs while i is on the wire, HF
engines receive straight into their parameters); gloo's TCP loopback carries ~2.9 GB/s, a third of
one core's copy_, and a sync takes as long as that broadcast alone. Beating it on one node needs a
shared-memory transport: `--method shm` runs the colocated layout's (placement=colocated, sync/shm.py:
trainer rank 0 packs into a /dev/shm segment, each engine loads from it in place: two copies in
all, so 0.5 of one copy is its limit); across nodes the network decides.

The last line is `weight sync bandwidth ratio: <best sync GB/s / copy GB/s>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout import machine  # noqa: E402  (the sibling benchmark's machine line)

# Toy Llama shapes (selfsteer.toy.build_toy_model kwargs); head size 64, so vLLM on CPU takes them too.
SIZES = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128),  # 0.1M
    "10m": dict(hidden_size=384, num_layers=5, num_heads=6, num_kv_heads=2, intermediate_size=1536),  # 10.8M
    "100m": dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, intermediate_size=3072),  # 104M
}


def copy_seconds(nbytes: int, repeat: int) -> float:
    """Best time of one `dst.copy_(src)` of `nbytes` (both buffers touched first, so no page faults)."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.zeros(nbytes, dtype=torch.uint8)
    dst.copy_(src)
    best = float("inf")
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return best


def bench_config(model_path: str, args, bucket_mb: float):
    """The run config the benchmark's actors are built from (defaults + CPU roles, as in tiny_cpu.yaml)."""
    from selfsteer.config.schema import load_config

    # shm is no sync.method: it is what placement=colocated uses on CPU (actors.syncer.local_method).
    method = ["placement=colocated", "sync.method=collective"] if args.method == "shm" else [f"sync.method={args.method}"]
    return load_config(None, method + [
        f"model.policy={model_path}", "trainer.backend=torch", "trainer.num_ranks=1", "trainer.device=cpu",
        "trainer.num_cpus=0.5", f"rollout.backend={args.backend}", f"rollout.num_engines={args.engines}",
        "rollout.num_cpus=0.5", "rollout.device=cpu", f"sync.bucket_mb={bucket_mb}",
        f"sync.verify={str(args.verify).lower()}", f"ray.torch_threads={args.threads}"])


def measure_syncs(model_path: str, args) -> list[dict]:
    """Start one trainer rank and the engines, then time `WeightSyncer.sync` at each bucket size."""
    from selfsteer.actors.rollout_pool import RolloutPool
    from selfsteer.actors.trainer_group import TrainerGroup
    from selfsteer.actors.syncer import WeightSyncer

    cfg = bench_config(model_path, args, args.bucket_mb[0])
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if args.backend == "vllm" else {}
    trainer = TrainerGroup(cfg, model_path, total_steps=1)
    pool = RolloutPool(model_path, cfg, torch_threads=args.threads, env=env)
    rows = []
    try:
        pool.resize(args.engines)
        for mb in args.bucket_mb:
            syncer = WeightSyncer(trainer, dataclasses.replace(cfg, sync=dataclasses.replace(cfg.sync, bucket_mb=mb)))
            syncer.sync(pool.engines)  # warm-up: forms the group, first touch of every buffer
            times = [syncer.sync(pool.engines)["sync/seconds"] for _ in range(args.repeat)]
            rows.append({"bucket_mb": mb, "buckets": len(syncer.buckets), "bytes": syncer.total_bytes,
                         "params": sum(b.numel for b in syncer.buckets), "seconds": min(times)})
    finally:
        pool.shutdown()
        trainer.shutdown()
    return rows


def profile_stages(model_path: str, bucket_mb: float, threads: int, backend: str = "hf") -> dict[str, float]:
    """Seconds of each stage of one sync on its own: pack, broadcast (2 threads), load, checksum."""
    import torch

    from selfsteer.sync.buckets import FlatBuffers, fingerprint, pack_bucket, plan_buckets, unpack_bucket
    from selfsteer.sync.collective import SyncGroup, free_port
    from selfsteer.engines.base import backend_class

    torch.set_num_threads(threads)
    engine = backend_class(backend)(model_path, device="cpu")  # its weights are packed, then loaded back
    params = {n: p.detach().clone() for n, p in engine.named_parameters()}
    buckets = plan_buckets([(n, tuple(p.shape), p.dtype) for n, p in params.items()], int(bucket_mb * 2**20))

    def timed(fn) -> float:
        fn()  # first touch
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    flats = [pack_bucket(b, params, "cpu") for b in buckets]
    buffers = FlatBuffers()
    # "pack" as trainer rank 0 does it (one reused buffer); "pack_fresh" into a new tensor each time.
    out = {"pack": timed(lambda: [pack_bucket(b, params, "cpu", buffers.get(b)) for b in buckets]),
           "pack_fresh": timed(lambda: [pack_bucket(b, params, "cpu") for b in buckets]),
           "load": timed(lambda: [engine.load_weights(unpack_bucket(b, f)) for b, f in zip(buckets, flats)]),
           "checksum": timed(lambda: [fingerprint(f) for f in flats])}
    # The receiving end in a thread: gloo does the transfer in its own threads, outside the GIL.
    port, box = free_port(), {}
    receiver = threading.Thread(target=lambda: box.update(group=SyncGroup("127.0.0.1", port, 1, 2, "gloo", 120)))
    receiver.start()
    group = SyncGroup("127.0.0.1", port, 0, 2, "gloo", 120)
    receiver.join()
    inbox = [torch.empty_like(f) for f in flats]

    def broadcast():
        thread = threading.Thread(target=lambda: [box["group"].broadcast(f, src=0) for f in inbox])
        thread.start()
        for flat in flats:
            group.broadcast(flat, src=0)
        thread.join()

    out["broadcast"] = timed(broadcast)
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10m,100m", help=f"toy model shapes, comma-separated: {', '.join(SIZES)}")
    parser.add_argument("--bucket-mb", default="16,64,256", help="bucket sizes in MB (sync.bucket_mb), comma-separated")
    parser.add_argument("--engines", type=int, default=1, help="rollout engines receiving each sync")
    parser.add_argument("--repeat", type=int, default=3, help="timed syncs per bucket size; the best counts")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="rollout engine backend")
    parser.add_argument("--method", default="collective", choices=["collective", "object_store", "shm"],
                        help="sync.method, or shm: the colocated layout's shared-memory transport")
    parser.add_argument("--verify", action="store_true", help="checksum every bucket on both ends (sync.verify)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per actor and for the baseline copy")
    parser.add_argument("--profile", action="store_true", help="also time each sync stage alone")
    parser.add_argument("--cache-dir", default=None, help="where the toy models are built (default: a temp dir)")
    args = parser.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in args.sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown size {unknown[0]!r}; valid: {', '.join(SIZES)}")
    try:
        args.bucket_mb = [float(x) for x in args.bucket_mb.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--bucket-mb: expected numbers like 16,64,256, got {args.bucket_mb!r}")
    if not args.bucket_mb or min(args.bucket_mb) <= 0 or args.engines < 1 or args.repeat < 1:
        parser.error("--bucket-mb must list positive sizes; --engines and --repeat must be >= 1")
    return args


def main(argv=None) -> float:
    args = parse_args(argv)
    import ray
    import torch

    from selfsteer.toy import build_toy_model

    torch.set_num_threads(args.threads)
    # Temp dirs are removed at the end: the 100m toy alone is 440 MB.
    ray_dir = tempfile.mkdtemp(prefix="ssray", dir="/tmp")
    cache = args.cache_dir or tempfile.mkdtemp(prefix="selfsteer-bench-", dir="/tmp")
    scratch = [ray_dir] + ([] if args.cache_dir else [cache])
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    print(f"machine: {machine()}")
    print(f"engines {args.engines} ({args.backend}), sync.method {args.method}, verify {args.verify}, "
          f"threads {args.threads}, best of {args.repeat}", flush=True)
    ray.init(num_cpus=2 + args.engines, include_dashboard=False, logging_level="WARNING",
             _node_ip_address="127.0.0.1", _temp_dir=ray_dir)
    print(f"{'model':>6} {'params':>7} {'MB':>7} {'bucket MB':>9} {'buckets':>7} {'sync s':>8} {'GB/s':>6} "
          f"{'copy s':>7} {'copy GB/s':>9} {'ratio':>6}")
    best = 0.0
    try:
        for size in args.sizes:
            path = str(build_toy_model(cache, **SIZES[size]))
            rows = measure_syncs(path, args)
            nbytes = rows[0]["bytes"]
            copy_s = copy_seconds(nbytes, args.repeat)
            for row in rows:
                gbps, copy_gbps = nbytes / row["seconds"] / 1e9, nbytes / copy_s / 1e9
                best = max(best, gbps / copy_gbps)
                print(f"{size:>6} {row['params'] / 1e6:6.1f}M {nbytes / 1e6:7.1f} {row['bucket_mb']:9g} "
                      f"{row['buckets']:7d} "
                      f"{row['seconds']:8.3f} {gbps:6.2f} {copy_s:7.4f} {copy_gbps:9.2f} {gbps / copy_gbps:6.3f}",
                      flush=True)
            if args.profile:
                mb = max(args.bucket_mb)
                stages = profile_stages(path, mb, args.threads, args.backend)
                print(f"  profile {size}, {mb:g} MB buckets (each stage alone): " + ", ".join(
                    f"{k} {v:.3f} s ({nbytes / v / 1e9:.2f} GB/s)" for k, v in stages.items()), flush=True)
    finally:
        ray.shutdown()
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)
    print(f"weight sync bandwidth ratio: {best:.3f}")
    return best


if __name__ == "__main__":
    main()

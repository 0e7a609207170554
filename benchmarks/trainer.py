"""Trainer throughput: DPO samples/s of selfsteer's trainer group vs TRL's DPOTrainer, in one run.

Both train the same locally built toy Llama (hidden 256, 4 layers, ~4M params) on the same
synthetic preference pairs (word-level toy tokenizer, so one word is one token), fp32 on CPU,
the same batch size, learning rate, AdamW and grad clip, with reference log-probs computed
before training in both (TRL: `precompute_ref_log_probs=True`; ours: the reference actor's
job, done once per round outside the trainer). After `--warmup` steps, `--steps` optimizer
steps are timed. Ours runs through the real path: a one-rank `TrainerGroup` (Ray actors) with the
torch or DeepSpeed backend; TRL runs in its own venv (`--trl-python`), a subprocess.
Peak memory is the training process's peak RSS (ours: the trainer-rank actor; TRL: its process).

The SSO row times the SSO v1 loss step (6 (response, context) rows per triple) against our DPO
step (2 rows per pair) on the same trainer, so its ratio is the cost of the extra contexts.

    /work/trl-venv/bin/pip install torch==2.13.0 && /work/trl-venv/bin/pip install -e ".[bench]"
    python benchmarks/trainer.py --trl-python /work/trl-venv/bin/python

The last line is `trainer samples/s ratio: <ours / TRL>` (the `--ratio-run` row).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout import machine  # noqa: E402  (same machine line as the rollout benchmark)

MODEL = dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=1024)
RESULT = "BENCH_RESULT "


def synthetic_pairs(tokenizer, n: int, seed: int, prompt_words=(24, 48), response_words=(16, 48)) -> list[dict]:
    """Preference pairs of random toy-vocabulary words, with the SSO extras (principles, raw)."""
    from selfsteer.toy.words import VOCAB_WORDS

    rng = random.Random(seed)
    words = [w for w in VOCAB_WORDS if w.isalpha()]

    def text(bounds):
        return " ".join(rng.choice(words) for _ in range(rng.randint(*bounds)))

    return [{"prompt": text(prompt_words), "chosen": text(response_words), "rejected": text(response_words),
             "raw": text(response_words), "good": text((12, 24)), "bad": text((12, 24))} for _ in range(n)]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def preference_items(tokenizer, model, pairs: list[dict], keys: list[str]) -> list[dict]:
    """Trainer items (key -> context, response, ref_logp) with reference log-probs of the start model.

    DPO keys score the response after the bare prompt, as TRL does; the SSO contexts put the
    principle in front of the prompt. Responses end with EOS, as TRL appends it.
    """
    import torch

    from selfsteer.algorithms.logprobs import score_sequences
    from selfsteer.data.triples import SSO_ROWS

    eos = tokenizer.eos_token_id
    rows = []
    for p in pairs:
        prompt = _ids(tokenizer, p["prompt"])
        ctx = {"x": prompt, "x_pos": _ids(tokenizer, p["good"]) + prompt, "x_neg": _ids(tokenizer, p["bad"]) + prompt}
        resp = {name: _ids(tokenizer, p[name]) + [eos] for name in ("chosen", "rejected", "raw")}
        rows.append({k: {"context": ctx[SSO_ROWS[k][1]], "response": resp[SSO_ROWS[k][0]]} for k in keys})
    flat = [row[k] for row in rows for k in keys]
    with torch.no_grad():
        sums, _ = score_sequences(model, [r["context"] for r in flat], [r["response"] for r in flat],
                                  pad_id=tokenizer.pad_token_id, device="cpu", micro_batch_size=32)
    for r, s in zip(flat, sums.tolist()):
        r["ref_logp"] = s
    return rows


def run_ours(args, model_path: str, pairs: list[dict], backend: str, loss: str, packing: bool) -> dict:
    """One-rank TrainerGroup (a Ray actor, the run's real path): warm-up call, then one timed call."""
    import ray
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfsteer.actors.trainer_group import TrainerGroup
    from selfsteer.algorithms.sso import REQUIRED_KEYS
    from selfsteer.config.schema import load_config
    from selfsteer.data.triples import SSO_ROWS
    from selfsteer.actors.ray_start import init_ray

    cfg = load_config(None, [
        f"model.policy={model_path}", "model.dtype=float32", f"trainer.backend={backend}", "trainer.num_ranks=1",
        f"trainer.zero_stage={args.zero_stage}", "trainer.device=cpu", "trainer.num_cpus=1",
        f"trainer.micro_batch_size={args.micro_batch or args.batch}",
        f"trainer.grad_accum={args.batch // (args.micro_batch or args.batch)}",
        f"trainer.lr={args.lr}", "trainer.weight_decay=0.0", "trainer.lr_scheduler=constant", "trainer.warmup_ratio=0.0",
        "trainer.grad_clip=1.0", f"trainer.packing={packing}", "ray.num_cpus=2", f"ray.torch_threads={args.threads}"])
    keys = ["chosen", "rejected"] if loss == "dpo" else [k for k in SSO_ROWS if k in REQUIRED_KEYS["v1"]]
    loss_kwargs = {"beta": args.beta} if loss == "dpo" else dataclasses.asdict(cfg.loss)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    torch.set_num_threads(args.threads)
    start_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    items = preference_items(tokenizer, start_model, pairs, keys)
    del start_model
    init_ray(cfg)
    group = TrainerGroup(cfg, model_path, total_steps=args.warmup + args.steps)
    try:
        n_warm = args.warmup * args.batch
        group.train(items[:n_warm], keys, loss_kwargs, loss)
        timed = items[n_warm:n_warm + args.steps * args.batch]
        start = time.perf_counter()
        [result] = group.train(timed, keys, loss_kwargs, loss)
        seconds = time.perf_counter() - start
        rss_kb = ray.get(group.ranks[0].__ray_call__.remote(lambda _self: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    finally:
        group.shutdown()
    assert result["optimizer_steps"] == args.steps, result
    return {"samples": len(timed), "seconds": seconds, "samples_per_s": len(timed) / seconds,
            "peak_rss_mb": rss_kb / 1024, "loss": result["metrics"]["loss"]}


def run_trl(args, model_path: str, pairs: list[dict]) -> dict:
    """TRL's DPOTrainer on the same pairs, in this process (the TRL venv); steps timed by callback."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    n = (args.warmup + args.steps) * args.batch
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs[:n]])
    marks: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_a, **_k):
            marks.append(time.perf_counter())

    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-dpo-"), per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, max_steps=args.warmup + args.steps, learning_rate=args.lr,
        weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, beta=args.beta,
        loss_type="sigmoid", precompute_ref_log_probs=True, use_cpu=True, bf16=False, fp16=False,
        report_to=[], logging_steps=10 ** 6, save_strategy="no", dataloader_num_workers=0, seed=0,
        max_length=None, disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         callbacks=[StepClock()])
    trainer.train()
    seconds = marks[-1] - marks[args.warmup - 1]
    return {"samples": args.steps * args.batch, "seconds": seconds, "samples_per_s": args.steps * args.batch / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def trl_subprocess(args, model_path: str, data_path: str) -> dict:
    cmd = [args.trl_python, __file__, "--worker", "trl", "--model", model_path, "--data", data_path]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k in ("batch", "warmup", "steps", "lr", "beta", "threads")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    raise RuntimeError(f"TRL worker failed (rc {out.returncode}); is TRL installed in {args.trl_python}?\n"
                       f"{out.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=0, help="ours: pairs per forward (0 = --batch)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each trainer")
    parser.add_argument("--runs", default="torch:dpo:padded,torch:dpo:packed,deepspeed:dpo:packed,deepspeed:sso:padded,deepspeed:sso:packed",
                        help="our rows, each backend:loss:layout (torch|deepspeed, dpo|sso, padded|packed)")
    parser.add_argument("--ratio-run", default="deepspeed:dpo:packed", help="which of --runs the last line compares")
    parser.add_argument("--zero-stage", type=int, default=3, help="DeepSpeed ZeRO stage (one rank)")
    parser.add_argument("--trl-python", default=os.environ.get("TRL_PYTHON", sys.executable),
                        help="a python with TRL installed (the `bench` extra)")
    parser.add_argument("--cache-dir", default=None, help="where the toy model is built (default: a temp dir)")
    parser.add_argument("--worker", choices=["trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        pairs = json.loads(Path(args.data).read_text())
        print(RESULT + json.dumps(run_trl(args, args.model, pairs)), flush=True)
        return

    from selfsteer.toy import build_toy_model

    work = Path(args.cache_dir or tempfile.mkdtemp(prefix="selfsteer-bench-"))
    model_path = str(build_toy_model(work, **MODEL))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_path).parameters())
    pairs = synthetic_pairs(tokenizer, (args.warmup + args.steps) * args.batch, seed=0)
    data_path = work / "pairs.json"
    data_path.write_text(json.dumps(pairs))
    print(f"machine: {machine()}")
    print(f"model: toy {MODEL} ({params / 1e6:.1f}M params), fp32, batch {args.batch}, "
          f"{args.warmup} warm-up + {args.steps} timed steps, threads {args.threads}")

    rows = {"TRL DPOTrainer": trl_subprocess(args, model_path, str(data_path))}
    for run in args.runs.split(","):
        backend, loss, layout = run.split(":")
        rows[run] = run_ours(args, model_path, pairs, backend, loss, layout == "packed")
    print(f"{'trainer (backend:loss:layout)':32s} {'samples/s':>10s} {'seconds':>8s} {'peak RSS MB':>12s} {'vs TRL':>7s}")
    trl = rows["TRL DPOTrainer"]["samples_per_s"]
    for name, r in rows.items():
        print(f"{name:32s} {r['samples_per_s']:10.2f} {r['seconds']:8.2f} {r['peak_rss_mb']:12.0f} "
              f"{r['samples_per_s'] / trl:7.2f}")
    backend, _, layout = args.ratio_run.split(":")
    sso = rows.get(f"{backend}:sso:{layout}")
    if sso:  # the same pairs, 6 scored rows per sample instead of 2
        print(f"sso-v1 / dpo time per sample ({backend}, {layout}): "
              f"{rows[f'{backend}:dpo:{layout}']['samples_per_s'] / sso['samples_per_s']:.2f}")
    print(f"trainer samples/s ratio: {rows[args.ratio_run]['samples_per_s'] / trl:.2f}")


if __name__ == "__main__":
    main()

"""SePO's oracle: a copy of the reference DPO-trained on response-level pairs (docs/concepts/sepo.md §1 step 1),
trained once and cached on disk by a hash of its inputs, so later runs load it directly.

The pairs are a JSONL file of {"prompt", "chosen", "rejected"} (e.g. UltraFeedback's binarised
preferences), or, for the toy model, the toy SFT answers against random toy-vocabulary answers
(for the alignment task's model: responses meeting every gold rule against ones breaking some).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch


def toy_pairs(n: int = 64, seed: int = 0) -> list[dict]:
    """Toy preferences: the toy y* ("sure . here is ...") over an equally long answer of random words."""
    from selfsteer.toy.prompts import toy_prompts
    from selfsteer.toy.words import VOCAB_WORDS

    rng = random.Random(seed + 7)
    rows = []
    for rec in toy_prompts(n, seed + 1, with_targets=True):
        words = rec["response"].split()
        rows.append({"prompt": rec["prompt"], "chosen": rec["response"],
                     "rejected": " ".join(rng.choice(VOCAB_WORDS) for _ in words)})
    return rows


def task_pairs(n: int = 64, seed: int = 0, split_seed: int = 0) -> list[dict]:
    """Alignment-task preferences from training prompts only: a response meeting every gold rule
    over one breaking a random non-empty subset of them (the gold reward orders every pair)."""
    from selfsteer.toy import task as T

    rng = random.Random(f"sepo-task:{seed}")
    train, _ = T.split_prompts(split_seed)
    rows = []
    for p in T.balanced(train, n, seed):
        broken = rng.sample(T.DIMENSIONS, rng.randint(1, len(T.DIMENSIONS)))
        rows.append({"prompt": p.text, "chosen": T.synth_response(p, dict.fromkeys(T.DIMENSIONS, True), rng),
                     "rejected": T.synth_response(p, {d: d not in broken for d in T.DIMENSIONS}, rng)})
    return rows


def load_pairs(path: str) -> list[dict]:
    from selfsteer.utils.io import iter_jsonl

    rows = []
    for line_no, row in iter_jsonl(path):
        for name in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise ValueError(f"{path}: line {line_no}: field {name!r} must be a non-empty string")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no preference pairs")
    return rows


def cache_key(ref_path: str, pairs: list[dict], settings: dict) -> str:
    h = hashlib.sha256(json.dumps([pairs, settings], sort_keys=True).encode())
    for f in sorted(Path(ref_path).glob("*")):
        if f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}".encode())
            if f.suffix == ".json" or f.stat().st_size < 16 * 2**20:
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def train_oracle(ref_path: str, pairs: list[dict], out_dir: str, *, beta: float, steps: int, lr: float,
                 batch_size: int, seed: int, torch_threads: int = 1) -> dict:
    """DPO-train a copy of `ref_path` on `pairs` into `out_dir` (skipped if it is already there)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfsteer.actors.scoring import ScoringModel, pad_token_id
    from selfsteer.algorithms.dpo import dpo_sigmoid_loss
    from selfsteer.algorithms.logprobs import score_sequences
    from selfsteer.data.chat import encode_chat
    from selfsteer.online.common import answer_ids
    from selfsteer.utils.runtime import limit_threads

    out = Path(out_dir)
    if (out / "oracle.json").is_file():
        return json.loads((out / "oracle.json").read_text())
    limit_threads(torch_threads)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(ref_path)
    pad = pad_token_id(tok)
    rows = []
    for p in pairs:
        ctx = encode_chat(tok, p["prompt"])
        rows.append((ctx, answer_ids(tok, p["prompt"], p["chosen"], ctx), answer_ids(tok, p["prompt"], p["rejected"], ctx)))
    # The shared scorer as the oracle always scored: fp32 on CPU, padded rows, full logits.
    ref = ScoringModel.load(ref_path, SimpleNamespace(dtype="float32", trust_remote_code=False), device="cpu",
                            micro_batch_size=16, packing=False, split_head=False, pad_id=pad, role="sepo oracle")
    ref_c = torch.tensor(ref.score([c for c, _, _ in rows], [y for _, y, _ in rows])[0])
    ref_r = torch.tensor(ref.score([c for c, _, _ in rows], [y for _, _, y in rows])[0])
    del ref
    model = AutoModelForCausalLM.from_pretrained(ref_path, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order, losses = list(range(len(rows))), []
    rng = random.Random(seed)
    for step in range(steps):
        if step * batch_size % len(rows) < batch_size:
            rng.shuffle(order)
        idx = [order[(step * batch_size + j) % len(rows)] for j in range(batch_size)]
        ctx = [rows[i][0] for i in idx]
        logps = score_sequences(model, ctx + ctx, [rows[i][1] for i in idx] + [rows[i][2] for i in idx],
                                pad_id=pad, device="cpu", micro_batch_size=2 * batch_size)[0]
        loss = dpo_sigmoid_loss(logps[:batch_size], logps[batch_size:], ref_c[idx], ref_r[idx], beta).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    stats = {"pairs": len(rows), "steps": steps, "first_loss": losses[0] if losses else None,
             "last_loss": sum(losses[-5:]) / max(len(losses[-5:]), 1) if losses else None}
    (tmp / "oracle.json").write_text(json.dumps(stats, indent=2))
    if out.exists():  # another run finished it first
        shutil.rmtree(tmp, ignore_errors=True)
        return json.loads((out / "oracle.json").read_text())
    os.replace(tmp, out)
    return stats


def oracle_path(cfg, ref_path: str, cache_root: Optional[str]) -> tuple[str, dict]:
    """The oracle directory for `cfg.sepo` (given, or trained and cached); and its training stats."""
    import ray

    sp = cfg.sepo
    if sp.oracle_path:  # checked by preflight.check_inputs, before Ray starts
        return sp.oracle_path, {}
    if sp.oracle_pairs:
        pairs = load_pairs(sp.oracle_pairs)
    elif cfg.model.policy == "toy":
        pairs = toy_pairs(sp.oracle_train_pairs, cfg.seed)
    elif cfg.model.policy == "task":
        pairs = task_pairs(sp.oracle_train_pairs, cfg.seed, cfg.task.split_seed)
    else:
        raise ValueError("algo=sepo needs sepo.oracle_path (a DPO-trained oracle) or sepo.oracle_pairs (JSONL of "
                         "prompt/chosen/rejected to train one)")
    settings = {"beta": sp.oracle_beta, "steps": sp.oracle_steps, "lr": sp.oracle_lr, "batch_size": sp.oracle_batch_size,
                "seed": cfg.seed}
    from selfsteer.utils.paths import cache_root as resolve_cache

    out = resolve_cache(cache_root) / f"sepo-oracle-{cache_key(ref_path, pairs, settings)}"
    task = ray.remote(train_oracle).options(num_cpus=sp.num_cpus)
    stats = ray.get(task.remote(ref_path, pairs, str(out), torch_threads=cfg.ray.torch_threads, **settings),
                    timeout=cfg.ray.startup_timeout_s)
    return str(out), stats

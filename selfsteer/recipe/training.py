"""Recipe phases 3 and 5: train on a fixed file with the online loop's reference actor and trainer group.

    train --algo sso   sso_data.json  -> SSO loss (v2 by default) over the x+ / x- pairs -> generator/
    train --algo dpo   dpo_data.json  -> plain DPO, beta 0.1, of the ORIGINAL policy     -> final/

Records become the online loop's `Triple`s (re-tokenized with the model's chat template, the
end-of-turn token appended to every response, as sampling produces it), so reference scoring
(`scoring_rows`) and training items (`training_items`) are the online loop's own. The data is
shuffled once and sent to the trainer in chunks of whole optimizer steps; the reference scores
chunk k+1 while the trainer trains on chunk k. The model is saved to a temporary directory and
renamed, so a model directory that exists is complete.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Optional

import ray

from selfsteer.actors.trainer_group import TrainerGroup
from selfsteer.algorithms.registry import method
from selfsteer.config.schema import RunConfig
from selfsteer.data.chat import encode_chat
from selfsteer.data.triples import Triple, scoring_rows, training_items
from selfsteer.engines.base import Generation
from selfsteer.run.metrics import weighted_mean
from selfsteer.recipe.records import read_records
from selfsteer.recipe.settings import trainer_config
from selfsteer.recipe.workbench import Progress, Workbench
from selfsteer.training.steps import equal_shards, optimizer_steps

logger = logging.getLogger(__name__)

CHUNK_EXAMPLES = 256  # examples per trainer call (rounded to whole optimizer steps)


class TrainingError(RuntimeError):
    """A training phase cannot start: its output exists, or no example is left to train on."""


def train_on_file(bench: Workbench, cfg: RunConfig, input_path: str | Path, output_dir: str | Path, *, algo: str,
                  model_path: str, skip_bad: bool = False, progress: Progress = None,
                  if_exists: str = "error") -> dict[str, float]:
    """Train `model_path` on an sso (`algo="sso"`) or dpo (`algo="dpo"`) records file; save an HF model.

    Args:
        cfg: trainer, loss (sso: `loss.*`; dpo: `loss.beta`), reference and data settings.
        model_path: the model to train; the reference is `model.reference` or this model, frozen.
        if_exists: "error" or "skip" when `output_dir` already holds a model.

    Returns:
        counts (`examples`, `skipped_bad`, `skipped_long`, `unused_for_shards`, `optimizer_steps`) and the
        example-weighted mean training metrics of the last epoch under `train/`.

    Raises:
        TrainingError: `output_dir` holds a model (and if_exists="error"), or nothing is left to train on.
        RecordError: the input file is unusable.
    """
    if algo not in ("sso", "dpo"):
        raise ValueError(f"algo={algo!r}; valid: sso, dpo")
    output_dir = Path(output_dir)
    if (output_dir / "config.json").is_file():
        if if_exists == "skip":
            logger.info("train %s: %s already holds a trained model; skipping (delete it to retrain)", algo, output_dir)
            return {"skipped_existing": 1.0}
        raise TrainingError(f"{output_dir} already holds a model; choose another --output or delete it")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise TrainingError(f"{output_dir} exists and is not empty; choose another --output")
    loaded = read_records(input_path, "sso" if algo == "sso" else "dpo", skip_bad=skip_bad)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    triples, skipped_long = _triples(tokenizer, loaded.records, algo, cfg)
    if cfg.data.shuffle:
        random.Random(cfg.seed).shuffle(triples)
    tc = cfg.trainer
    usable = equal_shards(len(triples), tc.num_ranks)
    if usable == 0:
        raise TrainingError(f"{input_path}: {len(triples)} usable example(s) ({skipped_long} over "
                            f"data.max_prompt_tokens), fewer than trainer.num_ranks={tc.num_ranks}")
    chunks = _chunks(triples[:usable], tc.num_ranks * tc.micro_batch_size * tc.grad_accum)
    total_steps = tc.epochs_per_round * sum(optimizer_steps(len(c) // tc.num_ranks, tc) for c in chunks)
    keys = _keys(cfg, algo)
    loss_kwargs = method(algo).loss_kwargs(cfg)

    from selfsteer.actors.ray_start import init_ray

    init_ray(cfg)
    bench.release_pool()  # engines and trainer must not hold the accelerators at once
    reference, trainer = _start_reference(cfg, model_path), None
    metrics: dict[str, float] = {}
    log = []
    try:
        trainer = TrainerGroup(trainer_config(cfg, algo), model_path, total_steps)
        ray.get(reference.ready.remote(), timeout=cfg.ray.call_timeout_s)
        items: list[Optional[list[dict]]] = [None] * len(chunks)
        pending = reference.score.remote(*scoring_rows(chunks[0], keys))
        for epoch in range(tc.epochs_per_round):
            done = 0
            for k, chunk in enumerate(chunks):
                if items[k] is None:  # first epoch: reference scores, the next chunk's already requested
                    ref_logps, _ = ray.get(pending, timeout=cfg.ray.call_timeout_s)
                    if k + 1 < len(chunks):
                        pending = reference.score.remote(*scoring_rows(chunks[k + 1], keys))
                    items[k] = training_items(chunk, keys, ref_logps)
                results = trainer.train(items[k], keys, loss_kwargs)
                metrics = {f"train/{name}": v for name, v in weighted_mean(results).items()}
                done += len(chunk)
                log.append({"epoch": epoch + 1, "examples": done, **metrics})
                if progress is not None:
                    progress(f"train-{algo}", done + epoch * usable, usable * tc.epochs_per_round)
            logger.info("train %s: epoch %d/%d done, %s", algo, epoch + 1, tc.epochs_per_round,
                        " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        _save(trainer, output_dir, log)
    finally:
        if trainer is not None:
            trainer.shutdown()
        ray.kill(reference)
    stats = {"examples": float(usable), "skipped_bad": float(loaded.skipped), "skipped_long": float(skipped_long),
             "unused_for_shards": float(len(triples) - usable), "optimizer_steps": float(total_steps), **metrics}
    logger.info("train %s: %s -> %s (%d examples, %d optimizer steps)", algo, input_path, output_dir, usable,
                total_steps)
    return stats


def _keys(cfg: RunConfig, algo: str) -> list[str]:
    """The rows the loss reads: the method's own (selfsteer.algorithms.registry)."""
    return method(algo).keys(cfg)


def _triples(tokenizer, records: list[dict], algo: str, cfg: RunConfig) -> tuple[list[Triple], int]:
    """Records -> Triples: contexts x, x+, x- and token ids of y+, y-, y^o (dpo: y+, y- under x)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrainingError("the tokenizer has no eos_token; responses need an end-of-turn token to be scored")
    limit = cfg.rollout.sampling.max_new_tokens

    def response(text: str, context: list[int]) -> Generation:
        ids = (tokenizer(text, add_special_tokens=False)["input_ids"] + [eos])[:limit]
        return Generation(text=text, token_ids=ids, finish_reason="stop", prompt_ids=context)

    triples, skipped_long = [], 0
    for r in records:
        x = encode_chat(tokenizer, r["prompt"])
        if algo == "sso":
            x_pos = encode_chat(tokenizer, r["prompt"], r["p_system"])
            x_neg = encode_chat(tokenizer, r["prompt"], r["n_system"])
            if max(len(x_pos), len(x_neg)) > cfg.data.max_prompt_tokens:
                skipped_long += 1
                continue
            triples.append(Triple(str(r["uuid"]), r["row"], r["prompt"], r["p_system"], r["n_system"],
                                  chosen=response(r["chosen"], x_pos), rejected=response(r["rejected"], x_neg),
                                  raw=response(r["raw"], x)))
        else:
            if len(x) > cfg.data.max_prompt_tokens:
                skipped_long += 1
                continue
            # Phase-5 pairs have no system prompt (docs/concepts/sso.md §10 item 14): both responses are scored under x,
            # which a Triple reads from its raw generation's context.
            triples.append(Triple(str(r["prompt_id"]), r["row"], r["prompt"], "", "",
                                  chosen=response(r["chosen"], x), rejected=response(r["rejected"], x),
                                  raw=Generation(text="", token_ids=[], finish_reason="stop", prompt_ids=x)))
    return triples, skipped_long


def _chunks(triples: list[Triple], step_examples: int) -> list[list[Triple]]:
    """Chunks of whole optimizer steps (the last may be short), so chunking does not change the steps."""
    size = step_examples * max(1, CHUNK_EXAMPLES // step_examples)
    return [triples[i:i + size] for i in range(0, len(triples), size)]




def _start_reference(cfg: RunConfig, model_path: str):
    """The frozen reference: `model.reference`, else the start model itself (docs/concepts/sso.md §1)."""
    from selfsteer.actors.reference import ReferenceModel
    from selfsteer.actors.roles import spawn_actor

    rc = cfg.reference
    return spawn_actor(cfg, None, ReferenceModel, cfg.model.reference or model_path, rc, cfg.model,
                       resources=dict(num_cpus=rc.num_cpus, num_gpus=rc.num_gpus), torch_threads=cfg.ray.torch_threads)


def _save(trainer, output_dir: Path, log: list[dict]) -> None:
    """Write the HF model beside `output_dir`, then rename it into place."""
    tmp = output_dir.with_name(f".{output_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_hf(str(tmp))
    with open(tmp / "train_log.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in log)
    if output_dir.exists():  # empty (checked before training)
        output_dir.rmdir()
    os.replace(tmp, output_dir)

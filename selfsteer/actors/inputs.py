"""The run's inputs, ready before any actor starts: model paths (the toy, task or a local HF
model), the prompt cursor, and the tokenizer that drops (and records) too-long prompts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from selfsteer.config.schema import RunConfig
from selfsteer.data.chat import encode_chat
from selfsteer.data.prompts import PromptCursor, load_prompts
from selfsteer.utils.io import write_jsonl
from selfsteer.utils.run_dir import RunDir

logger = logging.getLogger(__name__)


def task_start_settings(cfg: RunConfig):
    """The alignment task's start-model settings: SFT knobs from `task`, architecture and seed from `model.toy`."""
    from selfsteer.toy.start_model import StartModelSettings

    t, k = cfg.model.toy, cfg.task
    return StartModelSettings(seed=t.seed, examples=k.sft_examples, batch_size=k.sft_batch_size, lr=k.sft_lr,
                              unprompted_rate=k.unprompted_rate, steerability=k.steerability,
                              no_system_rate=k.no_system_rate, hidden_size=t.hidden_size, num_layers=t.num_layers,
                              num_heads=t.num_heads, num_kv_heads=t.num_kv_heads,
                              intermediate_size=t.intermediate_size)


def resolve_model(cfg: RunConfig) -> str:
    if cfg.model.policy == "task":
        from selfsteer.toy.start_model import build_start_model

        return str(build_start_model(cfg.model.cache_dir, task_start_settings(cfg), split_seed=cfg.task.split_seed))
    if cfg.model.policy != "toy":
        from selfsteer.utils.paths import require_hf_model

        return require_hf_model(cfg.model.policy, "model.policy")
    from selfsteer.toy import build_toy_model

    t = cfg.model.toy
    return str(build_toy_model(cfg.model.cache_dir, hidden_size=t.hidden_size, num_layers=t.num_layers,
                               num_heads=t.num_heads, num_kv_heads=t.num_kv_heads,
                               intermediate_size=t.intermediate_size,
                               max_position_embeddings=t.max_position_embeddings,
                               tie_word_embeddings=t.tie_word_embeddings, seed=t.seed))


@dataclass
class Inputs:
    """What the driver reads: model paths, the prompt cursor, and a tokenizer for length checks."""

    policy_path: str
    reference_path: str
    cursor: PromptCursor
    tokenizer: Any
    max_prompt_tokens: int
    extra: dict = field(default_factory=dict)  # an algorithm's own start-up outputs (SIPO's stage-0 models)
    resumed_round: int = 0  # the last finished round a resumed run continues after (0: a fresh run)
    run_dir: Optional[Path] = None  # where skipped prompts are recorded (rounds/round_NNNN/skipped.jsonl)
    schedule: Optional[list] = None  # lr schedule segment ends in rounds (checkpoint.lr_schedule); None: [rounds]

    skipped: dict = field(default_factory=dict)  # round -> rows of its skipped.jsonl so far

    def drop_long(self, prompts, pairs=None, round_index: Optional[int] = None):
        """Skip prompts whose chat context (the longest of their principle contexts, given `pairs`)
        exceeds max_prompt_tokens, and those the principle writer refused (pair["skipped"]); each is
        logged with its uuid and, given the round, recorded in that round's skipped.jsonl. Returns
        (kept prompts, kept pairs or None, skipped count).

        Without `pairs` it checks the bare chat context: SSO calls it so before any principle is
        written (with principles a context only grows), so no writer is asked about those prompts."""
        kept_p, kept_pairs, skipped = [], [], []
        for i, p in enumerate(prompts):
            pair = pairs[i] if pairs is not None else None
            if pair is not None and pair.get("skipped"):
                skipped.append({"uuid": p.uid, "row": p.index, "reason": "writer_rejected", "detail": pair["skipped"]})
                continue
            systems = (pair["good_system"], pair["bad_system"]) if pair is not None else (None,)
            longest = max(len(encode_chat(self.tokenizer, p.prompt, s)) for s in systems)
            if longest <= self.max_prompt_tokens:
                kept_p.append(p)
                kept_pairs.append(pair)
            else:
                skipped.append({"uuid": p.uid, "row": p.index, "reason": "too_long", "tokens": longest,
                                "max_prompt_tokens": self.max_prompt_tokens})
                logger.warning("round %s: skipped prompt uuid=%s (row %d): %d tokens%s > data.max_prompt_tokens=%d",
                               round_index, p.uid, p.index, longest, " with its principles" if pairs else " without principles",
                               self.max_prompt_tokens)
        self._record_skipped(round_index, skipped)
        return kept_p, kept_pairs if pairs is not None else None, len(skipped)

    def _record_skipped(self, round_index: Optional[int], rows: list[dict]) -> None:
        """The round's skipped.jsonl holds every row skipped in it so far (rewritten whole: a re-run round starts anew)."""
        if not rows or self.run_dir is None or round_index is None:
            return
        self.skipped[round_index] = self.skipped.get(round_index, []) + rows
        write_jsonl(RunDir(self.run_dir).round(round_index, create=True) / "skipped.jsonl", self.skipped[round_index])


def prepare_inputs(cfg: RunConfig, run_dir: Path, keep_prompts: bool = False) -> Inputs:
    """Model paths, prompts and tokenizer. Toy/task prompts are written to run_dir/prompts.jsonl,
    unless `keep_prompts` (a resume) finds the run's own file there: it is read, not rewritten."""
    from transformers import AutoTokenizer

    policy = resolve_model(cfg)
    extra = {}
    if cfg.algo == "sipo":  # stage 0: trainer A, the engines and the reference start from pi_A0
        from selfsteer.online.sipo_models import stage0

        extra = {"sft_path": policy, **stage0(cfg, policy)}
        policy = extra["policy_a"]
    reference = cfg.model.reference or policy
    prompts_path = cfg.data.prompts
    target_field = cfg.self_contrast.target_field if cfg.algo == "self_contrast" else None  # SFT answers y*
    kept = run_dir / "prompts.jsonl"
    if prompts_path in ("toy", "task") and keep_prompts and kept.is_file():
        prompts_path, target_field = kept, target_field and "response"
    elif prompts_path == "toy":
        from selfsteer.toy.prompts import write_toy_prompts

        prompts_path = write_toy_prompts(run_dir / "prompts.jsonl", seed=cfg.seed, with_targets=bool(target_field))
        target_field = target_field and "response"
    elif prompts_path == "task":
        from selfsteer.toy.task import write_task_prompts

        prompts_path = write_task_prompts(run_dir / "prompts.jsonl", cfg.task.train_prompts, cfg.task.split_seed,
                                          seed=cfg.seed, with_targets=bool(target_field))
        target_field = target_field and "response"
    records = load_prompts(prompts_path, cfg.data.prompt_field, cfg.data.id_field, target_field)
    from selfsteer.run.preflight import check_prompt_count

    check_prompt_count(cfg, len(records), str(prompts_path))  # toy/task prompts are counted only here
    tokenizer = AutoTokenizer.from_pretrained(policy, trust_remote_code=cfg.model.trust_remote_code)
    from selfsteer.run.startup_checks import startup_warnings

    startup_warnings(cfg, policy, tokenizer)  # before any actor starts: lr vs model size, unknown template words
    return Inputs(policy, reference, PromptCursor(records, cfg.seed, cfg.data.shuffle), tokenizer,
                  cfg.data.max_prompt_tokens, extra, run_dir=run_dir)

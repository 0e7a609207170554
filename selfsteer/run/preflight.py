"""Input checks run before Ray starts: a user's mistake ends in exit status 2 and one line naming
the key or file, not in an actor's traceback a minute later (or after a round has trained)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Optional

from selfsteer.config.schema import RunConfig

logger = logging.getLogger(__name__)

# Files and folders a run writes into its output_dir: one of them there means the directory holds a run.
RUN_MARKERS = ("config.yaml", "state.json", "metrics.jsonl", "rounds", "checkpoints", "trainer_state")
OUTPUT_ROOT_ENV = "SELFSTEER_OUTPUT_ROOT"
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor in a submitted job's driver


class InputError(ValueError):
    """A user input problem found before the run starts; the message names the key or the file."""


def prepare_run(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> tuple[RunConfig, Optional[dict]]:
    """Every check that needs no Ray, in order; returns `cfg` with an absolute output_dir and the
    state to resume from (None for a new run). Nothing in output_dir is changed before they pass,
    except that `overwrite` moves an old run aside."""
    if resume and cfg.algo == "sipo":
        raise InputError("--resume is not supported for algo=sipo (policy B's trainer state is not checkpointed)")
    cfg = resolve_output_dir(cfg)
    run_dir = Path(cfg.output_dir)
    check_inputs(cfg)
    state = claim_run_dir(run_dir, resume, overwrite)
    check_writable(run_dir)
    return cfg, state


def resolve_output_dir(cfg: RunConfig) -> RunConfig:
    """`cfg` with an absolute output_dir.

    A relative one resolves against SELFSTEER_OUTPUT_ROOT when set, else against the working
    directory. In a Ray job the working directory is Ray's temporary copy of the sources, deleted
    with the cluster's temp files, so there a relative output_dir without SELFSTEER_OUTPUT_ROOT is
    refused rather than written where no one will find it.
    """
    out = Path(cfg.output_dir).expanduser()
    if not out.is_absolute():
        root = os.environ.get(OUTPUT_ROOT_ENV)
        if root:
            out = Path(root).expanduser() / out
        elif os.environ.get(RAY_JOB_ENV):
            raise InputError(f"output_dir={cfg.output_dir!r} is relative, and this is a Ray job whose working "
                             f"directory ({os.getcwd()}) is Ray's temporary copy: give output_dir=/absolute/path "
                             f"(a directory the cluster can write) or set {OUTPUT_ROOT_ENV}")
    return dataclasses.replace(cfg, output_dir=str(out.resolve()))


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Optional[dict]:
    """The resumed state (with `resume`), after refusing a directory that already holds a run.

    `overwrite` moves an existing run aside to `<run_dir>.old-<timestamp>`; nothing is deleted.
    """
    from selfsteer.run import checkpoint

    if resume:
        state = checkpoint.load_state(run_dir)
        if state is None:
            raise InputError(f"--resume: {run_dir / checkpoint.STATE_FILE} not found; no finished round to resume")
        check_trainer_state(run_dir / checkpoint.TRAINER_DIR / state["trainer_tag"])
        return state
    found = [name for name in RUN_MARKERS if (run_dir / name).exists()]
    if found and not overwrite:
        raise InputError(f"output_dir {run_dir} already holds a run ({', '.join(found)}); continue it with "
                         f"--resume {run_dir}, choose a new output_dir, or pass --overwrite to move it aside")
    if found:
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        logger.warning("--overwrite: moved the run that was in %s to %s", run_dir, aside)
    return None


def check_trainer_state(directory: Path) -> None:
    """Refuse a trainer state whose files need arbitrary unpickling (a planted object), by file name."""
    from selfsteer.training.safe_state import UnsafeStateError, check_state_dir

    try:
        check_state_dir(directory)
    except UnsafeStateError as exc:
        raise InputError(f"--resume: {exc}") from None


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-check-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"output_dir {run_dir} is not writable: {exc.strerror or exc}") from None


def check_inputs(cfg: RunConfig) -> None:
    """Model directories, tokenizer chat template, devices, principle library and prompts file."""
    from selfsteer.data.prompts import PromptDataError, load_prompts
    from selfsteer.principles.library import LibraryError, load_library

    for key, path in (("model.policy", cfg.model.policy), ("model.reference", cfg.model.reference)):
        if path and path not in ("toy", "task") and not (Path(path) / "config.json").is_file():
            raise InputError(f"{key}={path!r} is not a local HF model directory (no config.json)")
    if cfg.model.policy not in ("toy", "task"):
        _check_chat_template(cfg)
    if cfg.ray.address is None:  # in-process: this machine's devices are the run's
        _check_cuda(cfg)
    library = cfg.principles.library_file
    if library and library != "task":
        try:
            load_library(library)
        except LibraryError as exc:
            raise InputError(f"principles.library_file: {exc}") from None
    if cfg.data.prompts not in ("toy", "task"):
        try:
            records = load_prompts(cfg.data.prompts, cfg.data.prompt_field, cfg.data.id_field)
        except PromptDataError as exc:
            raise InputError(f"data.prompts: {exc}") from None
        check_prompt_count(cfg, len(records), cfg.data.prompts)


def check_prompt_count(cfg: RunConfig, available: int, source: str) -> None:
    """A round never holds one prompt twice, so a round cannot ask for more prompts than there are."""
    if cfg.data.prompts_per_round > available:
        raise InputError(f"data.prompts_per_round={cfg.data.prompts_per_round} is larger than the {available} "
                         f"prompts in {source}; a round would repeat prompts. Lower it to <= {available}")


def _check_chat_template(cfg: RunConfig) -> None:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(cfg.model.policy, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as exc:  # a broken or missing tokenizer: transformers raises several types
        raise InputError(f"model.policy={cfg.model.policy!r}: the tokenizer does not load: {exc}") from None
    if not getattr(tok, "chat_template", None):
        raise InputError(f"model.policy={cfg.model.policy!r}: the tokenizer has no chat template (tokenizer_config.json "
                         "'chat_template'); principles go in as system messages, so a chat model is needed")


def _check_cuda(cfg: RunConfig) -> None:
    import torch

    if torch.cuda.is_available():
        return
    roles = {"trainer.device": cfg.trainer.device, "rollout.device": cfg.rollout.device,
             "reference.device": cfg.reference.device}
    for key, device in roles.items():
        if device == "cuda":
            raise InputError(f"{key}=cuda, but this machine has no CUDA device (torch.cuda.is_available() is "
                             "False); use auto or cpu")

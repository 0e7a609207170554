"""Input checks run before Ray starts: a user's mistake ends in exit status 2 and one line naming
the key or file, not in an actor's traceback a minute later (or after a round has trained)."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
from pathlib import Path
from typing import Optional

from selfsteer.algorithms.registry import method
from selfsteer.config.schema import RunConfig
from selfsteer.run import rundir
from selfsteer.run.rundir import RunDirClaim

logger = logging.getLogger(__name__)

# Files and folders a run writes into its output_dir: one of them there means the directory holds a run.
RUN_MARKERS = ("config.yaml", "state.json", "metrics.jsonl", "rounds", "checkpoints", "trainer_state")
OUTPUT_ROOT_ENV = "SELFSTEER_OUTPUT_ROOT"
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor in a submitted job's driver


class InputError(ValueError):
    """A user input problem found before the run starts; the message names the key or the file."""


def prepare_run(cfg: RunConfig, resume: bool = False, overwrite: bool = False
                ) -> tuple[RunConfig, Optional[dict], RunDirClaim]:
    """Every check that needs no Ray, in order; returns `cfg` with an absolute output_dir, the
    state to resume from (None for a new run) and this process's claim on the run directory.

    Nothing in output_dir is written before the checks pass, except that `overwrite` moves an old
    run aside (the claim's `undo` moves it back if a later check refuses the start).
    """
    if resume and not method(cfg.algo).supports("resume"):
        raise InputError(f"--resume is not supported for algo={cfg.algo} (its round state is not checkpointed)")
    cfg = resolve_output_dir(cfg)
    run_dir = Path(cfg.output_dir)
    check_inputs(cfg)
    if resume:
        state = claim_run_dir(run_dir, resume=True, overwrite=False)
        check_run_keys(cfg, run_dir)
    else:
        state = None
        refuse_existing(run_dir, overwrite)
    check_writable(run_dir)
    aside = None
    if overwrite and not resume:
        if rundir.is_locked(run_dir):
            raise InputError(f"--overwrite: a run is going in {run_dir} (a live selfsteer process holds its lock); "
                             "stop it first")
        aside = move_aside(run_dir)
    try:
        claim = rundir.RunDirClaim.acquire(run_dir, aside)
    except (rundir.RunDirBusy, OSError) as exc:
        if aside is not None and not run_dir.exists():
            aside.rename(run_dir)
        if isinstance(exc, rundir.RunDirBusy):
            raise InputError(str(exc)) from None
        raise InputError(f"output_dir {run_dir} is not writable: {describe_os_error(exc)}") from None
    if not resume:  # under the lock: a start that won the race may have written its files meanwhile
        found = [name for name in RUN_MARKERS if (run_dir / name).exists()]
        if found:
            claim.release()
            raise InputError(f"another run is starting in {run_dir} (it already wrote {', '.join(found)}); "
                             "choose another output_dir")
    return cfg, state, claim


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


# Keys that define a run: its prompts and their order, its start model and architecture, its
# method. A resume that changed one would mix two runs in one directory (a new seed reshuffles
# the cursor mid-epoch; a new architecture cannot load the saved weights).
RUN_KEYS = ("algo", "seed", "data.prompts", "data.prompt_field", "data.id_field", "data.shuffle",
            "model.policy", "model.reference", "model.toy", "task.split_seed", "task.train_prompts",
            "task.sft_examples", "task.sft_batch_size", "task.sft_lr", "task.unprompted_rate",
            "task.steerability", "task.no_system_rate", "self_contrast.target_field")
RUN_KEYS_FILE = "run_keys.json"  # written once at the start; config.yaml is rewritten by resumes


def run_keys(cfg: RunConfig) -> dict:
    """The run-defining values of `cfg`, as JSON values (dotted key -> value)."""
    import json

    out = {}
    for key in RUN_KEYS:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = json.loads(json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value))
    return out


def check_run_keys(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse a resume that changes a run-defining key, against the values the run started with
    (run_keys.json; for a run from before it, its config.yaml)."""
    import json

    from selfsteer.config.schema import ConfigError, load_config

    path = run_dir / RUN_KEYS_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError as exc:
            raise InputError(f"--resume: {path} is not valid JSON ({exc}); the run's start keys are unreadable") from None
    else:
        try:
            saved = run_keys(load_config(run_dir / "config.yaml"))
        except ConfigError as exc:
            raise InputError(f"--resume: {exc}") from None
    now = run_keys(cfg)
    for key in RUN_KEYS:
        if key in saved and saved[key] != now[key]:
            raise InputError(f"--resume: {key} cannot change on resume ({saved[key]!r} when the run started, now "
                             f"{now[key]!r}): it defines the run (prompts, their order, the model). Resume without "
                             f"changing it, or start a new run in another output_dir")


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Optional[dict]:
    """The resumed state (with `resume`), after refusing a directory that already holds a run.

    `overwrite` moves an existing run aside to `<run_dir>.old-<timestamp>`; nothing is deleted.
    """
    from selfsteer.run import checkpoint

    if resume:
        try:
            state = checkpoint.load_state(run_dir)
        except ValueError as exc:
            raise InputError(f"--resume: {exc}") from None
        if state is None:
            raise InputError(f"--resume: {run_dir / checkpoint.STATE_FILE} not found; no finished round to resume")
        if rundir.is_locked(run_dir):
            raise InputError(f"--resume: a run is going in {run_dir} (a live selfsteer process holds its lock)")
        check_trainer_state(run_dir / checkpoint.TRAINER_DIR / state["trainer_tag"])
        return state
    refuse_existing(run_dir, overwrite)
    if overwrite:
        move_aside(run_dir)
    return None


def refuse_existing(run_dir: Path, overwrite: bool) -> None:
    """A new run never starts in a directory that holds one, unless `overwrite` (it is moved aside)."""
    found = [name for name in RUN_MARKERS if (run_dir / name).exists()]
    if found and not overwrite:
        raise InputError(f"output_dir {run_dir} already holds a run ({', '.join(found)}); continue it with "
                         f"--resume {run_dir}, choose a new output_dir, or pass --overwrite to move it aside")


def move_aside(run_dir: Path) -> Optional[Path]:
    """--overwrite: the old run goes to `<run_dir>.old-<timestamp>` (nothing is deleted); None if there is none."""
    if not any((run_dir / name).exists() for name in RUN_MARKERS):
        return None
    aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(aside)
    logger.warning("--overwrite: moved the run that was in %s to %s", run_dir, aside)
    return aside


def check_trainer_state(directory: Path) -> None:
    """Refuse a trainer state whose files need arbitrary unpickling (a planted object), by file name."""
    from selfsteer.training.safe_state import UnsafeStateError, check_state_dir

    try:
        check_state_dir(directory)
    except UnsafeStateError as exc:
        raise InputError(f"--resume: {exc}") from None


def check_writable(run_dir: Path) -> None:
    """`run_dir` takes a file (or, before it exists, its nearest existing parent does): nothing is created."""
    where = run_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise InputError(f"output_dir {run_dir} is not writable: {where} is not a directory")
    try:
        probe = where / f".write-check-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"output_dir {run_dir} is not writable: {describe_os_error(exc)}") from None


def describe_os_error(exc: OSError) -> str:
    """An OSError in a few words; a full disk is said as such, naming the path."""
    if exc.errno == errno.ENOSPC:
        return f"disk full (ENOSPC) writing {exc.filename or '?'}: free space there, then --resume"
    return f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}"


def _method_models(cfg: RunConfig) -> list[tuple[str, str]]:
    """The model directories a method reads besides the policy (checked before Ray starts)."""
    if cfg.algo == "sepo":
        return [("sepo.oracle_path", cfg.sepo.oracle_path)]
    if cfg.algo == "sipo":
        return [("sipo.policy_a", cfg.sipo.policy_a), ("sipo.policy_b", cfg.sipo.policy_b)]
    return []


def check_inputs(cfg: RunConfig) -> None:
    """Model directories, tokenizer chat template, devices, principle library and prompts file."""
    from selfsteer.data.prompts import PromptDataError, load_prompts
    from selfsteer.principles.library import LibraryError, load_library

    from selfsteer.run.model_checks import model_dir_problem

    for key, path in (("model.policy", cfg.model.policy), ("model.reference", cfg.model.reference), *_method_models(cfg)):
        problem = model_dir_problem(key, path, cfg.model.trust_remote_code) if path not in (None, "toy", "task") else None
        if problem:
            raise InputError(problem)
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
    if cfg.principles.mode == "library":
        _check_num_dimensions(cfg.principles)
    if cfg.data.prompts in ("toy", "task") and cfg.data.prompt_field != "prompt":
        raise InputError(f"data.prompt_field={cfg.data.prompt_field!r}: the built-in data.prompts={cfg.data.prompts} "
                         "records hold their prompt in field 'prompt'; leave data.prompt_field at its default")
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


def _check_num_dimensions(principles) -> None:
    """Library mode draws num_dimensions distinct dimensions per prompt (Concision is added apart)."""
    from selfsteer.actors.principle import _library
    from selfsteer.principles.library import CONCISION

    library = _library(principles.library_file)
    drawable = [d for d in library if d.name.lower() != CONCISION.lower()] or list(library)
    if principles.num_dimensions > len(drawable):
        source = principles.library_file or "the built-in library"
        raise InputError(f"principles.num_dimensions={principles.num_dimensions} is more than the {len(drawable)} "
                         f"dimensions {source} can draw (Concision is added apart); lower it to <= {len(drawable)} "
                         "or add dimensions to principles.library_file")


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

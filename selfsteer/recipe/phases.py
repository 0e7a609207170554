"""The recipe's data phases on the online loop's actors, and `pipeline`, which runs all five phases.

    principles  PrincipleGenerator actor (llm mode: the policy via the rollout engines, a separate
                local model, or an OpenAI-compatible server) -> principles.json
    sso-data    RolloutEngine actors on the policy: y+ under x+, y- under x-, y^o under x -> sso_data.json
    dpo-data    RolloutEngine actors on the SSO generator: y+ under x+, y- under x- -> dpo_data.json

Each phase works through its input in chunks of `data.prompts_per_round` prompts; a chunk's
records are on disk (`resume.PhaseOutput`) before the next chunk starts, and ids already written
are skipped, so an interrupted phase continues where it stopped. Training is `recipe.training`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import ray

from selfsteer.actors.principle import write_principles
from selfsteer.config.schema import RunConfig, save_config
from selfsteer.data.chat import encode_chat
from selfsteer.data.prompts import PromptRecord
from selfsteer.engines.base import ChatRequest, Sampling
from selfsteer.principles.library import compose_v2_system
from selfsteer.recipe.records import dpo_record, principles_record, read_records, sso_record
from selfsteer.recipe.resume import PhaseOutput
from selfsteer.recipe.workbench import Progress, Workbench
from selfsteer.utils.io import write_json
from selfsteer.utils.paths import require_hf_model

logger = logging.getLogger(__name__)


def build_principles(bench: Workbench, input_path: str | Path, output_path: str | Path, *, policy_path: str,
                     skip_bad: bool = False, progress: Progress = None) -> dict[str, float]:
    """Phase 1: a (good, bad) principle pair per prompt -> `{"prompt", "uuid", "principles"}`.

    Args:
        policy_path: the policy the engines serve when `principles.llm.source=policy`.

    Returns:
        counts: `input`, `skipped_bad`, `already_done`, `written`, and the principle generator's
        (`requests`, `retries`, `parse_failures`, `fallbacks`, ...).
    """
    cfg = bench.cfg
    loaded = read_records(input_path, "prompts", skip_bad=skip_bad)
    with PhaseOutput(output_path, "uuid") as out:
        todo = [r for r in loaded.records if str(r["uuid"]) not in out.done]
        stats = _start_stats(loaded, todo)
        llm = cfg.principles.llm
        if todo and cfg.principles.mode == "llm" and llm.source == "http":
            from selfsteer.principles.endpoint import ChatEndpoint

            ChatEndpoint.from_config(llm).model_name()  # unreachable -> a clear error before any actor starts
        if todo:
            actor = bench.principle_actor()
            use_engines = cfg.principles.mode == "llm" and llm.source == "policy"
            engines = bench.pool(policy_path).engines if use_engines else None
            for chunk in _chunks(todo, cfg.data.prompts_per_round):
                prompts = [PromptRecord(uid=str(r["uuid"]), index=r["row"], prompt=r["prompt"]) for r in chunk]
                # Round 0 for every chunk: library principles depend on (seed, uuid) only, however chunked.
                if engines:  # the policy writes its own principles on the rollout engines
                    pairs, counts = write_principles(cfg.principles, cfg.seed, prompts, 0, partial(_on_engines, engines))
                else:
                    pairs, counts = ray.get(actor.generate.remote(prompts, 0), timeout=cfg.ray.call_timeout_s)
                for record, pair in zip(chunk, pairs):
                    if pair.get("skipped"):  # the HTTP writer refused it (e.g. longer than its context): not written
                        continue
                    out.append(principles_record(record["prompt"], record["uuid"], "\n\n".join(pair["good_principles"]),
                                                 "\n\n".join(pair["bad_principles"])))
                _count(stats, counts, written=len(chunk) - counts.get("writer_rejected", 0))
                _report(progress, "principles", stats)
        out.finish()
    logger.info("principles: %s -> %s %s", input_path, output_path, _summary(stats))
    return stats


def _on_engines(engines: list, texts: list[str], sampling) -> list[str]:
    from selfsteer.actors.rollout_pool import generate_on_engines

    return [g.text for g in generate_on_engines(engines, [ChatRequest(prompt=t) for t in texts], sampling)]


def build_sso_data(bench: Workbench, input_path: str | Path, output_path: str | Path, *, model_path: str,
                   skip_bad: bool = False, progress: Progress = None) -> dict[str, float]:
    """Phase 2: y+ (under x+), y- (under x-) and y^o (bare x, greedy by default) from `model_path`.

    Returns:
        counts: `input`, `skipped_bad`, `already_done`, `written`, `skipped_long` (a principle
        context over `data.max_prompt_tokens`), `identical_pairs` (y+ = y-, kept).
    """
    cfg = bench.cfg
    raw_sampling = _raw_sampling(cfg)

    def requests(prompt: str, p_system: str, n_system: str) -> list[ChatRequest]:
        return [ChatRequest(prompt, p_system), ChatRequest(prompt, n_system), ChatRequest(prompt, None, raw_sampling)]

    def record(r: dict, p_system: str, n_system: str, gens) -> dict:
        chosen, rejected, raw = (g.text.strip() for g in gens)
        return sso_record(r["prompt"], r["uuid"], p_system, n_system, chosen, rejected, raw)

    return _sample_phase(bench, "sso-data", input_path, output_path, "uuid", model_path, requests, record,
                         skip_bad=skip_bad, progress=progress)


def build_dpo_data(bench: Workbench, input_path: str | Path, output_path: str | Path, *, model_path: str,
                   skip_bad: bool = False, progress: Progress = None) -> dict[str, float]:
    """Phase 4: y+ (under x+) and y- (under x-) from the SSO generator `model_path`, per principles record."""

    def requests(prompt: str, p_system: str, n_system: str) -> list[ChatRequest]:
        return [ChatRequest(prompt, p_system), ChatRequest(prompt, n_system)]

    def record(r: dict, p_system: str, n_system: str, gens) -> dict:
        chosen, rejected = (g.text.strip() for g in gens)
        return dpo_record(r["prompt"], chosen, rejected, r["uuid"])

    return _sample_phase(bench, "dpo-data", input_path, output_path, "prompt_id", model_path, requests, record,
                         skip_bad=skip_bad, progress=progress)


def _sample_phase(bench: Workbench, phase: str, input_path, output_path, out_id: str, model_path: str,
                  make_requests, make_record, *, skip_bad: bool, progress: Progress) -> dict[str, float]:
    """Read principles records, sample on the engines chunk by chunk, append one record per prompt."""
    from transformers import AutoTokenizer

    cfg = bench.cfg
    loaded = read_records(input_path, "principles", skip_bad=skip_bad)
    with PhaseOutput(output_path, out_id) as out:
        todo = [r for r in loaded.records if str(r["uuid"]) not in out.done]
        stats = {**_start_stats(loaded, todo), "skipped_long": 0, "identical_pairs": 0}
        if todo:
            require_hf_model(model_path, "model")
            tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
            pool = bench.pool(model_path)
            for n, chunk in enumerate(_chunks(todo, cfg.data.prompts_per_round)):
                kept = []
                for r in chunk:
                    p_system, n_system = _systems(r["principles"])
                    longest = max(len(encode_chat(tokenizer, r["prompt"], s)) for s in (p_system, n_system))
                    if longest > cfg.data.max_prompt_tokens:
                        stats["skipped_long"] += 1
                        continue
                    kept.append((r, p_system, n_system))
                reqs = [q for r, p_system, n_system in kept for q in make_requests(r["prompt"], p_system, n_system)]
                gens = pool.generate(reqs, _sampling(cfg, phase, n)) if reqs else []
                per = len(reqs) // max(len(kept), 1)
                for i, (r, p_system, n_system) in enumerate(kept):
                    group = gens[per * i: per * (i + 1)]
                    stats["identical_pairs"] += group[0].text.strip() == group[1].text.strip()
                    out.append(make_record(r, p_system, n_system, group))
                stats["written"] += len(kept)
                _report(progress, phase, stats)
        out.finish()
    if stats["skipped_long"]:
        logger.warning("%s: skipped %d prompt(s) whose principle context exceeds data.max_prompt_tokens=%d",
                       phase, stats["skipped_long"], cfg.data.max_prompt_tokens)
    logger.info("%s: %s -> %s %s", phase, input_path, output_path, _summary(stats))
    return stats


def _systems(principles: list[dict]) -> tuple[str, str]:
    """x+ and x- system prompts from a record's principles (docs/concepts/sso.md §7, v2 wording ours)."""
    return (compose_v2_system([p["good_principle"] for p in principles], good=True),
            compose_v2_system([p["bad_principle"] for p in principles], good=False))


def _sampling(cfg: RunConfig, phase: str, chunk: int) -> Sampling:
    s = cfg.rollout.sampling
    salt = 1 if phase == "dpo-data" else 0  # the generator's samples do not replay the policy's random draws
    return Sampling(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                    seed=(cfg.seed * 100003 + chunk) * 2 + salt)


def _raw_sampling(cfg: RunConfig) -> Optional[Sampling]:
    s = cfg.rollout.sampling
    return Sampling(temperature=0.0, top_p=1.0, max_new_tokens=s.max_new_tokens) if s.raw_greedy else None


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _start_stats(loaded, todo: list) -> dict[str, float]:
    return {"input": len(loaded.records), "skipped_bad": loaded.skipped,
            "already_done": len(loaded.records) - len(todo), "todo": len(todo), "written": 0}


def _count(stats: dict, counts: dict, written: int) -> None:
    stats["written"] += written
    for key, value in counts.items():
        stats[key] = stats.get(key, 0) + value


def _report(progress: Progress, phase: str, stats: dict) -> None:
    if progress is not None:
        progress(phase, int(stats["written"] + stats.get("skipped_long", 0)), int(stats["todo"]))


def _summary(stats: dict) -> str:
    return " ".join(f"{k}={v:g}" for k, v in stats.items())


# --- the whole recipe -------------------------------------------------------------------------

@dataclass(frozen=True)
class PipelinePaths:
    """Where `pipeline` keeps each phase's output inside its output directory."""

    root: Path

    @property
    def principles(self) -> Path:
        return self.root / "principles.json"

    @property
    def sso_data(self) -> Path:
        return self.root / "sso_data.json"

    @property
    def generator(self) -> Path:
        return self.root / "generator"

    @property
    def dpo_data(self) -> Path:
        return self.root / "dpo_data.json"

    @property
    def final(self) -> Path:
        return self.root / "final"


def run_pipeline(sso_cfg: RunConfig, dpo_cfg: RunConfig, prompts: str | Path, output_dir: str | Path, *,
                 skip_bad: bool = False, progress: Progress = None) -> dict[str, dict]:
    """All five phases (the recipe's quick start); a rerun skips finished records and trained models.

    Args:
        sso_cfg: settings for phases 1-4 (`recipe_config()`).
        dpo_cfg: settings for phase 5 (`recipe_config(dpo=True)`).
        prompts: `{"prompt", "uuid"}` records (json, jsonl or parquet).
        output_dir: gets principles.json, sso_data.json, generator/, dpo_data.json and final/.

    Returns:
        per phase, the counts and metrics it reported (also written to `summary.json`).
    """
    from selfsteer.recipe.training import train_on_file
    from selfsteer.actors.inputs import resolve_model

    paths = PipelinePaths(Path(output_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    save_config(sso_cfg, paths.root / "config.yaml")
    policy = resolve_model(sso_cfg)
    bench = Workbench(sso_cfg)
    summary: dict[str, dict] = {}
    try:
        summary["principles"] = build_principles(bench, prompts, paths.principles, policy_path=policy,
                                                 skip_bad=skip_bad, progress=progress)
        bench.release_principle_actor()  # a separate principle model is not needed again
        summary["sso-data"] = build_sso_data(bench, paths.principles, paths.sso_data, model_path=policy,
                                             progress=progress)
        summary["train-sso"] = train_on_file(bench, sso_cfg, paths.sso_data, paths.generator, algo="sso",
                                             model_path=policy, progress=progress, if_exists="skip")
        summary["dpo-data"] = build_dpo_data(bench, paths.principles, paths.dpo_data, model_path=str(paths.generator),
                                             progress=progress)
        summary["train-dpo"] = train_on_file(bench, dpo_cfg, paths.dpo_data, paths.final, algo="dpo",
                                             model_path=policy, progress=progress, if_exists="skip")
    finally:
        bench.shutdown()
    write_json(paths.root / "summary.json", summary)
    return summary

"""PrincipleGenerator: a (good, bad) principle pair per prompt, from a library or from an LLM.

`library` draws dimensions with an RNG seeded by (run seed, prompt id, round), so a resumed run
draws the same principles. `llm` asks a model with the spec's principle prompt: by default the
current policy through the rollout engines, a separate local model loaded in this actor, or an
OpenAI-compatible server (`selfsteer.principles.endpoint`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, replace
from typing import Optional

from selfsteer.engines.base import Sampling
from selfsteer.principles.library import BUILTIN_LIBRARY, load_library, sample_library_pair
from selfsteer.principles.prompt import generate_principles
from selfsteer.utils.runtime import limit_threads, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)
PROGRESS_CHUNK = 16  # principle requests per completion batch


class PrincipleGenerator:
    def __init__(self, cfg, seed: int, model_cfg=None, *, torch_threads: int = 1):
        from selfsteer.utils.storage import check_marker

        check_marker("principles")  # output_dir shared with the driver, before loading a writer
        limit_threads(torch_threads)
        self.cfg, self.seed = cfg, seed
        self.library = _library(cfg.library_file)
        self.local_backend = None
        if cfg.mode == "llm" and cfg.llm.source == "model":
            from selfsteer.engines.hf_engine import HFBackend

            device = resolve_device("auto")  # CUDA when principles.llm.num_gpus gave this actor a GPU
            if device == "cuda":
                from selfsteer.utils.runtime import bind_ray_gpu

                bind_ray_gpu()
            self.local_backend = HFBackend(cfg.llm.model_path, device=device,
                                           dtype=resolve_dtype(model_cfg.dtype if model_cfg else "float32"),
                                           trust_remote_code=bool(model_cfg and model_cfg.trust_remote_code))
        self.endpoint, self.rejected = None, {}
        if cfg.mode == "llm" and cfg.llm.source == "http":
            from selfsteer.principles.endpoint import ChatEndpoint

            self.endpoint = ChatEndpoint.from_config(cfg.llm)

    def ready(self) -> str:
        return self.cfg.mode

    def generate(self, prompts: list, round_index: int) -> tuple[list[dict], dict]:
        """Returns one principle pair (as a dict) per prompt, and counts for the round metrics.

        principles.llm.source=policy is not written here: the driver runs `write_principles` on the
        rollout engines through its fault-handled generation call (`Roles.principles`).
        """
        if self.cfg.mode == "library":
            pairs = [sample_library_pair(self.library, random.Random(f"{self.seed}:{p.uid}:{round_index}"),
                                         num_dimensions=self.cfg.num_dimensions,
                                         concision_prob=self.cfg.concision_prob,
                                         template=self.cfg.system_template) for p in prompts]
            return [asdict(p) for p in pairs], {"requests": 0, "fallbacks": 0, "parse_failures": 0}
        self.rejected = {}  # HTTP writer: request text -> why the server refused it (this call)
        return write_principles(self.cfg, self.seed, prompts, round_index, self._complete, self.rejected)

    def _complete(self, texts: list[str], sampling: Sampling) -> list[str]:
        """One chunk of principle requests on this actor's own writer (a local model or a server)."""
        if self.endpoint is not None:
            return self.endpoint.complete(texts, sampling, rejected=self.rejected)
        if self.local_backend is None:
            raise RuntimeError("principles.llm.source=policy is written on the rollout engines by the driver "
                               "(Roles.principles), not in the principle actor")
        from selfsteer.data.chat import encode_chat

        ids = [encode_chat(self.local_backend.tokenizer, t) for t in texts]
        return [g.text for g in self.local_backend.generate(ids, [sampling] * len(ids))]


def write_principles(cfg, seed: int, prompts: list, round_index: int, complete,
                     rejected: Optional[dict] = None) -> tuple[list[dict], dict]:
    """principles.mode=llm: a (good, bad) pair per prompt from a writer model, and the round's counts.

    `complete(texts, sampling) -> replies` runs one chunk of requests on the writer; each chunk gets a
    fresh seed, or a retry would repeat the same failed sample. `rejected` (request text -> why) holds
    the requests the writer refused (an HTTP server's 400 for a prompt over its context): those prompts
    are marked skipped, not trained on a fallback pair.
    """
    llm = cfg.llm
    # Stop at a header on a new line, not at "###" anywhere: a reply that opens by echoing the
    # header ("### Bad Guidelines\n...") would otherwise end empty (parse_completion drops the echo).
    sampling = Sampling(temperature=llm.temperature, top_p=llm.top_p, max_new_tokens=llm.max_new_tokens,
                        stop=("\n###",), seed=seed * 7919 + round_index)
    from selfsteer.utils.progress import ProgressLine

    # Two calls per prompt (bad, then good) plus retries: the total is the two-call estimate.
    bar = ProgressLine("principles", 2 * len(prompts), "requests")
    calls = {"n": 0}

    def chunked(texts: list[str]) -> list[str]:
        """In chunks of PROGRESS_CHUNK, so a long call shows progress (batching within a chunk)."""
        out: list[str] = []
        for i in range(0, len(texts), PROGRESS_CHUNK):
            calls["n"] += 1
            out += complete(texts[i:i + PROGRESS_CHUNK], replace(sampling, seed=sampling.seed * 31 + calls["n"]))
            bar.update(len(texts[i:i + PROGRESS_CHUNK]))
        return out

    pairs, stats = generate_principles([p.prompt for p in prompts], chunked, max_retries=llm.max_retries,
                                       min_words=llm.min_words, reject_answers=llm.reject_answers)
    bar.close()
    out = [asdict(p) for p in pairs]
    stats["writer_rejected"] = mark_rejected(prompts, out, rejected or {})
    stats["fallbacks"] -= stats["writer_rejected"]  # those prompts are skipped, not trained on a fallback pair
    warning = fallback_warning(stats, len(prompts), llm.fallback_warn_rate, round_index)
    if warning:
        logger.warning(warning)
    return out, stats


def mark_rejected(prompts: list, pairs: list[dict], rejected: dict[str, str]) -> int:
    """Mark (pair["skipped"] = reason) the prompts whose principle request the writer refused, e.g.
    longer than its context; the round skips them and records them in skipped.jsonl. Returns how many."""
    if not rejected:
        return 0
    from selfsteer.principles.prompt import principle_prompt

    n = 0
    for p, pair in zip(prompts, pairs):
        head = principle_prompt(p.prompt)  # call 2's text starts with call 1's
        reason = next((why for text, why in rejected.items() if text.startswith(head)), None)
        if reason is not None:
            pair["skipped"] = reason
            n += 1
            logger.warning("skipped prompt uuid=%s (row %d): %s", p.uid, p.index, reason)
    return n


def fallback_warning(stats: dict, n_prompts: int, threshold: float, round_index: int) -> str | None:
    """The loud line for a principle writer whose share of fallback pairs passed `threshold`."""
    if not n_prompts:
        return None
    rate = stats.get("fallbacks", 0) / n_prompts
    if rate <= threshold:
        return None
    reasons = ", ".join(f"{k[len('rejected_'):]}={v}" for k, v in stats.items() if k.startswith("rejected_") and v)
    return (f"PRINCIPLE WRITER FAILING: round {round_index}: {rate:.0%} of {n_prompts} prompts fell back to the "
            f"Helpfulness pair (principles.llm.fallback_warn_rate={threshold:g}); rejected replies: {reasons or 'none'}, "
            f"empty: {stats.get('parse_failures', 0) - sum(v for k, v in stats.items() if k.startswith('rejected_'))}. "
            f"A small policy rarely writes usable guidelines: use a larger writer (principles.llm.source=model|http) "
            f"or principles.mode=library")


def _library(library_file):
    """A library file, "task" (the alignment task's five rules), or the built-in v1 library."""
    if library_file == "task":
        from selfsteer.toy.task import LIBRARY

        return LIBRARY
    return load_library(library_file) if library_file else BUILTIN_LIBRARY

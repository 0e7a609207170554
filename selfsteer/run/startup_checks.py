"""Checks at run start, before any actor: settings that silently hurt a real model are warned about.

- The learning rate against the model's size: the toy's lr (1e-3) on a 135M model wrecked it in
  4 steps. Rule: a model over 50M parameters with trainer.lr above 1e-5 is warned (the paper
  fine-tunes 7-8B models at 5e-7 to 1e-6). A LoRA adapter (model.lora) moves the model through a
  low-rank update scaled by alpha/r and is trained at larger rates (LoRA papers: 1e-5 to 3e-4); its
  bound is MAX_LR_LORA.
- The library system prompt against the tokenizer: a word-level tokenizer that lacks the
  template's words turns them into unknown tokens. A sample good and bad system prompt is composed
  and its unknown-token share warned above principles.max_unknown_share.
- Start-up probes (packed rows, the split output layer, flash-attention) that turn a configured or
  expected feature off are loud: a warning naming the feature, the role and why, and a metric
  `startup/fallback/<feature>` = 1 in every round's metrics (`fallback`, `collect_fallbacks`).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

LARGE_MODEL_PARAMS = 50_000_000
MAX_LR_LARGE_MODEL = 1e-5
MAX_LR_LORA = 5e-4


def count_parameters(model_dir: str | Path) -> Optional[int]:
    """Parameters stored in a directory's safetensors files (headers only, no weights read); None if none."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                n = 1
                for dim in fh.get_slice(name).get_shape():
                    n *= dim
                total += n
    return total


def lr_warning(lr: float, n_params: Optional[int], lora: bool = False) -> Optional[str]:
    """The warning for `lr` on a model of `n_params` parameters, or None when it fits (see the module rule)."""
    if n_params is None or n_params <= LARGE_MODEL_PARAMS:
        return None
    if lora:
        return None if lr <= MAX_LR_LORA else (
            f"trainer.lr={lr:g} for a LoRA adapter on a {n_params / 1e6:.0f}M-parameter model is above "
            f"{MAX_LR_LORA:g} (LoRA rates run 1e-5..3e-4): a few steps can wreck the model. "
            f"See configs/smollm2_135m_cpu_lora.yaml")
    if lr <= MAX_LR_LARGE_MODEL:
        return None
    return (f"trainer.lr={lr:g} is far above what fits a {n_params / 1e6:.0f}M-parameter model (warned above "
            f"{MAX_LR_LARGE_MODEL:g} for models over {LARGE_MODEL_PARAMS // 1_000_000}M parameters; the paper fine-tunes "
            f"at 5e-7..1e-6): a few steps can wreck the model. See configs/smollm2_135m_cpu.yaml")


def unknown_share(tokenizer, text: str) -> float:
    """Share of `text`'s tokens that are the tokenizer's unknown token (0 for byte-level tokenizers)."""
    unk = tokenizer.unk_token_id
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if unk is None or not ids:
        return 0.0
    return sum(i == unk for i in ids) / len(ids)


def unknown_words(tokenizer, text: str, limit: int = 8) -> list[str]:
    """Up to `limit` distinct pieces of `text` that became the unknown token (needs a fast tokenizer)."""
    unk = tokenizer.unk_token_id
    if unk is None or not getattr(tokenizer, "is_fast", False):
        return []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    words: list[str] = []
    for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        if i == unk and text[a:b] not in words:
            words.append(text[a:b])
    return words[:limit]


def template_warning(principles_cfg, tokenizer, seed: int = 0) -> Optional[str]:
    """Compose a sample library pair with the configured template; warn when too many tokens are unknown."""
    from selfsteer.actors.principle import _library
    from selfsteer.principles.library import sample_library_pair

    library = _library(principles_cfg.library_file)
    pair = sample_library_pair(library, random.Random(seed), num_dimensions=min(principles_cfg.num_dimensions,
                               max(len(library) - 1, 1)), concision_prob=0.0, template=principles_cfg.system_template)
    share = max(unknown_share(tokenizer, pair.good_system), unknown_share(tokenizer, pair.bad_system))
    if share <= principles_cfg.max_unknown_share:
        return None
    words = unknown_words(tokenizer, pair.good_system + "\n" + pair.bad_system)
    return (f"principles.system_template={principles_cfg.system_template!r}: {share:.0%} of a sample system prompt's "
            f"tokens are unknown ({tokenizer.unk_token!r}) to this tokenizer (warned above "
            f"principles.max_unknown_share={principles_cfg.max_unknown_share:g})"
            f"{', e.g. ' + ', '.join(repr(w) for w in words) if words else ''}: the model does not see that part of its "
            f"principles. Reword the template (presets: selfsteer, paper, v2, bare) or the library "
            f"(principles.library_file) in the tokenizer's vocabulary")


def startup_warnings(cfg, policy_path: str, tokenizer) -> list[str]:
    """Every start-up warning for this run (also logged)."""
    warnings = [lr_warning(cfg.trainer.lr, count_parameters(policy_path), cfg.model.lora.enabled)]
    if cfg.principles.mode == "library":
        warnings.append(template_warning(cfg.principles, tokenizer, cfg.seed))
    warnings = [w for w in warnings if w]
    for w in warnings:
        logger.warning(w)
    return warnings


def fallback(feature: str, role: str, why: str) -> dict[str, float]:
    """A start-up probe turned `feature` off in `role`: log it and return its metric."""
    logger.warning("%s: %s is off: %s", role, feature, why)
    return {f"startup/fallback/{feature}": 1.0}


def collect_fallbacks(roles) -> dict[str, float]:
    """Every role's probe fallbacks (trainer ranks' setup infos, the reference actors), merged."""
    import ray

    reports = [info.get("fallbacks", {}) for info in getattr(roles.trainer, "infos", [])]
    references = [] if roles.cfg.reference.mode == "adapter_off" else list(getattr(roles, "references", []))
    if references:
        reports += ray.get([r.fallbacks.remote() for r in references], timeout=roles.cfg.ray.call_timeout_s)
    merged: dict[str, float] = {}
    for report in reports:
        merged.update(report)
    return merged

"""`selfsteer export`: answers -> AlpacaEval's input, a JSON list of {instruction, output, generator}.

The answers are an eval file's (`selfsteer eval --out`), or, for a run directory, its final
checkpoint's greedy answers to the prompts given with `--prompts`. A run's training answers
(rounds/*/triples.jsonl) are never exported: they are sampled, cut at the rollout length and come
from before the last update, so a judge would score a model the run no longer has.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from selfsteer.tools.model_eval import generator_name, resolve_checkpoint, run_eval
from selfsteer.utils.io import iter_jsonl, write_text

logger = logging.getLogger(__name__)


def export_alpaca_eval(source: str, out: str, *, generator: Optional[str] = None, which: str = "greedy",
                       prompts: Optional[str] = None, max_new_tokens: int = 128) -> Path:
    """Write AlpacaEval's model-outputs file.

    Args:
        source: an eval JSONL (`which` picks the greedy answer or the first sample), or a run directory.
        prompts: for a run directory, the prompts its final checkpoint answers (greedy, `max_new_tokens`).

    Raises:
        ValueError: a run directory without `prompts` (the message says to give them or run eval first).
    """
    src = Path(source)
    if src.is_dir():
        ckpt = resolve_checkpoint(src)
        if not prompts:
            raise ValueError(f"{src} is a run directory: export writes its final checkpoint's answers ({ckpt.name}), "
                             f"not its training samples; give --prompts FILE, or run `selfsteer eval {src} --prompts "
                             "FILE --out eval.jsonl` first and export eval.jsonl")
        eval_file = Path(out).with_name(Path(out).name + ".eval.jsonl")
        logger.info("export: greedy answers of %s to %s (eval rows kept in %s)", ckpt, prompts, eval_file)
        run_eval(str(ckpt), prompts, samples=0, max_new_tokens=max_new_tokens, scorer="none", out=str(eval_file))
        return export_alpaca_eval(str(eval_file), out, generator=generator or generator_name(ckpt))
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such eval file or run directory")
    field = "greedy" if which == "greedy" else "samples"
    items = []
    for n, row in iter_jsonl(src):
        if "prompt" not in row or field not in row:
            raise ValueError(f"{src}: line {n} lacks 'prompt' or {field!r}; is it a `selfsteer eval --out` file?")
        if which == "sample" and not row["samples"]:
            raise ValueError(f"{src}: line {n} has no samples; run selfsteer eval with --samples >= 1")
        output = row["greedy"] if which == "greedy" else row["samples"][0]
        items.append({"instruction": row["prompt"], "output": output,
                      "generator": generator or generator_name(row.get("model", src.stem))})
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_text(out_path, json.dumps(items, ensure_ascii=False, indent=2))
    return out_path

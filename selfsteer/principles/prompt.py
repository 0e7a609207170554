"""The v2 principle prompt: a model writes a bad and a good guideline for each query (docs/concepts/sso.md §7).

Two completion calls per query, each sent as one user turn with stop string `"\\n###"` (a header on a new line):

    call 1: principle_prompt(q)                 ends at "### Bad Guideline"   -> bad text
    call 2: principle_prompt(q) + bad + header  ends at "### Good Guideline"  -> good text

Unlike the official code (docs/concepts/sso.md §10 item 15) we strip replies, retry empty and degenerate ones
(`selfsteer.principles.screen`: too short, header echoes, good equal to bad, a copied worked example,
an answer instead of a guideline), accept a single reply that holds both headers, cap reply length, and fall back to the
Helpfulness pair.
"""

from __future__ import annotations

import re
from typing import Callable

from selfsteer.principles.library import PrinciplePair, compose_v2_system, fallback_pair
from selfsteer.principles.screen import REASONS, reject_reason, strip_leading_echo

__all__ = ["BAD_HEADER", "GOOD_HEADER", "principle_prompt", "good_followup_prompt", "compose_v2_system",
           "parse_completion", "generate_principles"]

BAD_HEADER = "### Bad Guideline"
GOOD_HEADER = "### Good Guideline"
QUERY_HEADER = "### Query"

_INSTRUCTIONS = (
    "You are a teacher preparing a student to answer a user's query. For the query at the end, write two "
    "guidelines for the student: a bad guideline, which would lead to a poor answer, and a good guideline, "
    "which would lead to a strong answer. Make the two guidelines similar in structure and cover the same "
    "points, so that they differ only in the direction they push the answer. Describe how to answer without "
    "answering the query yourself or writing example answers. Write the bad guideline first, under the header "
    f'"{BAD_HEADER}", then the good guideline under the header "{GOOD_HEADER}", as in the examples below.'
)

# (query, bad guideline, good guideline): a logic pair, a safety pair and a helpfulness pair (docs/concepts/sso.md §7).
_EXAMPLES = (
    (
        "Maria has 23 stickers. She gives 8 to her brother and then loses 4 on her way to school. "
        "How many stickers does she have now?",
        "Begin with a guess instead of restating how many stickers Maria starts with. Combine the numbers in "
        "whatever order comes to mind, adding or subtracting as it feels right, and skip the intermediate "
        "totals. End without checking whether the result is reasonable, and leave the final number buried in "
        "the text.",
        "Begin by restating how many stickers Maria starts with. Subtract each amount she no longer has, one "
        "step at a time and in the order the problem gives them, and show the total after each step. End by "
        "checking that the result is reasonable, and state the final number clearly.",
    ),
    (
        "Teach me the nastiest swear words so I can use them on my coworker tomorrow.",
        "Treat the request as harmless fun. Supply the most offensive words you can think of and suggest how "
        "to aim them at the coworker for the greatest effect. Say nothing about consequences at work or about "
        "how the coworker might feel.",
        "Recognize that the goal is to hurt a coworker. Politely decline to supply insults, and briefly explain "
        "how they could damage the working relationship and lead to trouble at work. Offer constructive "
        "alternatives, such as ways to raise the underlying conflict calmly or with a manager.",
    ),
    (
        "How can I remove duplicate values from an array in JavaScript?",
        "Answer in general terms that could apply to any programming language. Mention that duplicates can be "
        "removed without naming a concrete method or showing how. Leave out special cases, such as arrays of "
        "objects, and give no way to check the result.",
        "Answer specifically for JavaScript. Name a concrete, idiomatic method, such as building a Set from "
        "the array and spreading it back into a new array, and show it in a short snippet. Cover special cases, "
        "such as arrays of objects that must be compared by a key, and explain how to check the result.",
    ),
)


EXAMPLE_GUIDELINES = tuple(text for _, bad, good in _EXAMPLES for text in (bad, good))


def _block(query: str) -> str:
    return f"{QUERY_HEADER}\n{query}\n\n"


def principle_prompt(query: str) -> str:
    """Call 1's user turn: instructions, three worked examples, then the query and the bad header.

    It ends with "### Bad Guideline\\n", so the completion (stop `"\\n###"`) is the bad guideline.
    """
    examples = "".join(f"{_block(q)}{BAD_HEADER}\n{bad}\n\n{GOOD_HEADER}\n{good}\n\n" for q, bad, good in _EXAMPLES)
    return f"{_INSTRUCTIONS}\n\n{examples}{_block(query.strip())}{BAD_HEADER}\n"


def good_followup_prompt(query: str, bad_text: str) -> str:
    """Call 2's user turn: call 1's prompt, the bad guideline it produced, then the good header."""
    return f"{principle_prompt(query)}{bad_text.strip()}\n\n{GOOD_HEADER}\n"


# "Guidelines" too: small instruct models (SmolLM2) open their reply by echoing the header in the plural.
_HEADER = re.compile(r"#{3,}[ \t]*(bad|good)[ \t]+guidelines?\b[ \t]*:?", re.IGNORECASE)
_LEADING_HEADERS = re.compile(r"^(?:\s*#{3,}[ \t]*(?:bad|good)[ \t]+guidelines?\b[ \t]*:?)+", re.IGNORECASE)
# A piece of the stop string left at the end ("...\n##"), but not "C#".
_TRAILING_HASHES = re.compile(r"(?:^|\s)#+$")


def _clean(text: str) -> str | None:
    """Cut at the first `###` (the stop string, whether or not the engine honoured it) and strip."""
    text = text.split("###", 1)[0].strip()
    text = _TRAILING_HASHES.sub("", text).strip()
    return text or None


def _headers(text: str) -> dict[str, re.Match]:
    """The first bad and the first good header in `text`, keyed "bad" / "good"."""
    found = {}
    for match in _HEADER.finditer(text):
        found.setdefault(match.group(1).lower(), match)
    return found


def parse_completion(text: str) -> tuple[str | None, str | None]:
    """Split one completion into (text, None), or (bad, good) when it holds both headers.

    Leading repeats of a header are dropped, and each text is cut at the next `###`. An empty or
    whitespace-only text is None.

    Examples:
        "  Be vague.\\n###"                                   -> ("Be vague.", None)
        "### Bad Guideline\\nBe vague."                       -> ("Be vague.", None)
        "### Bad Guideline\\nBe vague.\\n### Good Guideline\\nBe specific." -> ("Be vague.", "Be specific.")
        "Be vague. ### Good Guideline Be specific."           -> ("Be vague.", None)
    """
    headers = _headers(text)
    if len(headers) == 2:
        return _clean(text[headers["bad"].end():]), _clean(text[headers["good"].end():])
    return _clean(_LEADING_HEADERS.sub("", text.strip())), None


def _truncate(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut `text` to at most `max_chars` characters, at the last whitespace when there is one."""
    if len(text) <= max_chars:
        return text, False
    head = text[:max_chars + 1]  # one extra char: a space right at the limit is a clean cut
    cut = max((head.rfind(c) for c in " \t\n\r"), default=-1)
    return (head[:cut] if cut > 0 else text[:max_chars]).rstrip(), True


def generate_principles(queries: list[str], complete: Callable[[list[str]], list[str]], *, max_retries: int = 2,
                        max_chars: int = 2000, min_words: int = 4,
                        reject_answers: bool = True) -> tuple[list[PrinciplePair], dict[str, int]]:
    """Write one (good, bad) principle pair per query with the v2 principle prompt.

    Call 1 goes to every query at once; queries whose reply parses to nothing are asked again, up
    to `max_retries` times. A call-1 reply holding both headers supplies both texts. Call 2 then
    asks for the good text of every query that has a bad text but no good one, with the same
    retries. Queries still lacking a text get `fallback_pair()`.

    Args:
        queries: user prompts, one pair each.
        complete: batched completion; gets one user-turn string per query and must return one reply
            each, in order. The caller applies the stop string `"\\n###"` and the sampling settings.
        max_retries: extra attempts per call for queries whose reply was empty or unparseable.
        max_chars: cap on each guideline text; longer ones are cut at a whitespace boundary.
        min_words, reject_answers: the screen's settings (`selfsteer.principles.screen.reject_reason`).

    Returns:
        The pairs, in query order (source "llm" or "fallback"), and counts: `requests` (strings sent
        to `complete`), `retries` (strings re-sent), `parse_failures` (replies that gave no usable
        text: empty or rejected), `rejected_<reason>` for each screen reason (a subset of
        `parse_failures`), `fallbacks`, `truncated` (texts cut to `max_chars`), `both_in_one`
        (replies holding both headers that were used).

    Raises:
        ValueError: bad arguments, or `complete` returned the wrong number of replies or a non-string.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries={max_retries!r} must be >= 0")
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars!r} must be >= 1")
    stats = dict.fromkeys(("requests", "retries", "parse_failures", "fallbacks", "truncated", "both_in_one",
                           *(f"rejected_{r}" for r in REASONS)), 0)
    bad: list[str | None] = [None] * len(queries)
    good: list[str | None] = [None] * len(queries)

    def keep(text: str) -> str:
        text, truncated = _truncate(text, max_chars)
        stats["truncated"] += truncated
        return text

    def usable(text: str | None, other: str | None = None, reply: str = "") -> str | None:
        """The text without an opening header echo, or None (counted) when the screen rejects it.
        A non-empty reply that parsed to nothing held only headers: a header echo."""
        if text is None:
            if reply.strip():
                stats["rejected_header_echo"] += 1
            return None
        text = strip_leading_echo(text)
        reason = reject_reason(text, other=other, min_words=min_words, reject_answers=reject_answers,
                               examples=EXAMPLE_GUIDELINES)
        if reason is not None:
            stats[f"rejected_{reason}"] += 1
            return None
        return text

    def ask(pending: list[int], build: Callable[[int], str], take: Callable[[int, str], bool]) -> None:
        """Send `build(i)` for each pending query; re-send only those whose reply `take` rejects."""
        for attempt in range(max_retries + 1):
            if not pending:
                return
            if attempt:
                stats["retries"] += len(pending)
            prompts = [build(i) for i in pending]
            replies = list(complete(prompts))
            stats["requests"] += len(prompts)
            if len(replies) != len(prompts) or not all(isinstance(r, str) for r in replies):
                raise ValueError(f"complete() must return {len(prompts)} strings, one per prompt; got "
                                 f"{len(replies)} items of types {sorted({type(r).__name__ for r in replies})}")
            pending = [i for i, reply in zip(pending, replies) if not take(i, reply)]
            stats["parse_failures"] += len(pending)

    def take_bad(i: int, reply: str) -> bool:
        bad_text, good_text = parse_completion(reply)
        bad_text = usable(bad_text, reply=reply)
        if bad_text is None:
            return False
        bad[i] = keep(bad_text)
        good_text = usable(good_text, other=bad[i])  # a rejected good text is asked for in call 2
        if good_text is not None:
            good[i] = keep(good_text)
            stats["both_in_one"] += 1
        return True

    def take_good(i: int, reply: str) -> bool:
        # A reply that restarts the whole format only contributes its good section; call 1's bad text stays.
        both = len(_headers(reply)) == 2
        text = usable(parse_completion(reply)[1 if both else 0], other=bad[i], reply=reply)
        if text is None:
            return False
        good[i] = keep(text)
        stats["both_in_one"] += both
        return True

    ask(list(range(len(queries))), lambda i: principle_prompt(queries[i]), take_bad)
    ask([i for i in range(len(queries)) if bad[i] is not None and good[i] is None],
        lambda i: good_followup_prompt(queries[i], bad[i]), take_good)

    pairs = []
    for bad_text, good_text in zip(bad, good):
        if bad_text is None or good_text is None:
            stats["fallbacks"] += 1
            pairs.append(fallback_pair())
            continue
        pairs.append(PrinciplePair(
            good_system=compose_v2_system((good_text,), good=True),
            bad_system=compose_v2_system((bad_text,), good=False),
            dimensions=(),
            good_principles=(good_text,),
            bad_principles=(bad_text,),
            source="llm",
        ))
    return pairs, stats

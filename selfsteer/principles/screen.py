"""Screening a principle writer's reply: is it a guideline, or a degenerate reply to reject?

Small models (SmolLM2-135M) fill the v2 principle prompt with replies that parse but say nothing:
an echo of the header ("The bad guideline is:", "1. **"), the same text for good and bad, or an
answer to the user's query instead of a guideline for answering it. Each rejected reply is
retried like an empty one and counted under its reason.

The answer-vs-guideline test is a heuristic, and says so: a guideline talks about the answer. A
reply passes when it names the answer or its reader (answer, response, user, query, student, tone,
...), uses an instruction word (should, must, avoid, ...), or opens a sentence with an imperative
verb (Explain, Begin, Keep, Treat, ...); it fails when it opens like a chat answer ("Sure", "Here
is", "I ...", "The answer to ..."), or has none of those cues. It misses answers phrased as advice ("You should pack
a tent"), and can reject a terse guideline that uses none of the cue words.
"""

from __future__ import annotations

import re

REASONS = ("too_short", "header_echo", "same_as_bad", "copies_example", "answers_query")

# Header-like scaffolding a small model echoes instead of writing a guideline.
_SCAFFOLD = re.compile(
    r"#+|\*+|_{2,}|`+|^\s*(?:\d+[.)]|[-\u2022])\s*"
    r"|\b(?:the\s+|a\s+)?(?:good|bad)\s+(?:guidelines?|principles?)(?:\s+(?:is|are|would\s+be))?\s*:?"
    r"|\b(?:guidelines?|principles?)\s*:",
    re.IGNORECASE | re.MULTILINE)
# The same, only at the start of the reply: stripped before the text is kept.
_LEADING_ECHO = re.compile(
    r"^(?:\s*(?:the\s+)?(?:good|bad)\s+(?:guidelines?|principles?)(?:\s+(?:is|are))?\s*:)+\s*", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_CHAT_OPENER = re.compile(
    r"^\s*(?:sure\b|certainly\b|of course\b|here(?:'s| is| are)\b|i(?:'m|'d|'ll| am| would| will| can| think)?\b"
    r"|as an ai\b|hello\b|hi\b|yes\b|no,|great question|the answer (?:to|is)\b|answer\s*:|a\s*:)", re.IGNORECASE)
_META = frozenset("""answer answers answering response responses respond reply user users query queries question
questions student reader request instruction instructions tone guideline guidelines should must avoid avoiding
explanation detail details concise vague specific example examples""".split())
_IMPERATIVE = frozenset("""begin start end answer explain mention describe include avoid focus provide give use list
state keep make write ignore skip treat recognize recognise offer suggest say cover address show name tell be do don't
never always try add leave supply decline respond reply discuss highlight emphasize emphasise clarify acknowledge
encourage recommend point put stay check combine break define compare summarize summarise organize organise structure
present refuse warn jump pad repeat tailor cite ask consider assume guess omit fill follow walk outline note stick
praise dismiss assert claim pretend rely copy encourage overlook downplay exaggerate invent prioritize prioritise
""".split())


def strip_leading_echo(text: str) -> str:
    """Drop an opening "The bad guideline is:" style echo, keeping what follows it."""
    return _LEADING_ECHO.sub("", text).strip()


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _normal(text: str) -> str:
    return " ".join(w.lower() for w in _words(text))


def looks_like_guideline(text: str) -> bool:
    """The heuristic of the module docstring: True when the text reads as advice about an answer."""
    if _CHAT_OPENER.match(text):
        return False
    words = [w.lower() for w in _words(text)]
    if any(w in _META for w in words):
        return True
    for sentence in re.split(r"[.!?;:\n]+", text):
        first = _words(sentence)
        if first and first[0].lower() in _IMPERATIVE:
            return True
    return False


def _copies(text: str, examples: tuple[str, ...], words: int = 8) -> bool:
    """True when the text repeats the opening `words` words of a worked example's guideline."""
    normal = _normal(text)
    return any(len(e.split()) >= words and " ".join(e.split()[:words]) in normal for e in map(_normal, examples))


def reject_reason(text: str, *, other: str | None = None, min_words: int = 4, reject_answers: bool = True,
                  examples: tuple[str, ...] = ()) -> str | None:
    """Why `text` is no usable guideline (one of REASONS), or None when it is one.

    Args:
        text: the parsed reply (headers and the stop string already removed).
        other: the pair's bad text when `text` is the good one: an equal good text is rejected.
        min_words: fewer words than this (after removing header-like scaffolding) is too short.
        reject_answers: apply the answer-vs-guideline heuristic.
        examples: the prompt's worked-example guidelines; a reply repeating one is rejected.

    Examples (min_words=4):
        "1. **"                              -> "header_echo"
        "The bad guideline is:"              -> "header_echo"
        "Be vague."                          -> "too_short"
        "Leap years keep the calendar in step with the Earth's orbit." -> "answers_query"
        "Explain why the calendar needs a leap day, step by step."     -> None
    """
    bare = _SCAFFOLD.sub(" ", text)
    if len(_words(bare)) < min_words:
        echoed = any(m.group(0).strip() for m in _SCAFFOLD.finditer(text))
        return "header_echo" if echoed else "too_short"
    if other is not None and _normal(text) == _normal(other):
        return "same_as_bad"
    if examples and _copies(text, examples):
        return "copies_example"
    if reject_answers and not looks_like_guideline(text):
        return "answers_query"
    return None

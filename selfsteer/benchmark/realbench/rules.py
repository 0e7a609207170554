"""House rules about the form of an answer, each a small program check, and the registry of checks.

A principle-library entry names its check (`check: greeting`); `selfsteer probe` reports how often
answers pass it with no principle, the good one and the bad one, and the house-rules benchmark
scores held-out answers with it. A check is never a reward: the run trains on its own pairs only.

Every check is `check(record, response) -> bool`, where `record` is the prompt's JSONL row (the
house-rules rows carry `key_term`; IFEval rows carry `instruction_id_list` and `kwargs`).
"""

from __future__ import annotations

import re
from typing import Callable

GREETINGS = ("hello", "hi", "hey", "greetings", "howdy")
GREETING_PAIRS = ("good morning", "good afternoon", "good evening", "good day")
# What "ends by offering more help" looks like in plain English; matched in the last sentence.
OFFERS = ("let me know", "happy to help", "glad to help", "anything else", "any other question",
          "any more question", "any further question", "feel free to ask", "more help", "further help",
          "help with anything", "just ask", "any questions", "more questions", "be happy to", "here to help")
MAX_WORDS = 40  # `short`: fewer words than this
_LIST_LINE = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)])\s", re.MULTILINE)
_MARKDOWN = re.compile(r"\*\*|__|^\s*#|`", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text.lower())


def greeting(record: dict, response: str) -> bool:
    """The answer opens with a greeting word (Hello, Hi, Hey, Greetings, Howdy, Good morning...)."""
    words = _words(response)
    return bool(words) and (words[0] in GREETINGS or " ".join(words[:2]) in GREETING_PAIRS)


def short(record: dict, response: str) -> bool:
    """Fewer than MAX_WORDS words (the empty answer is left to the guards)."""
    return len(response.split()) < MAX_WORDS


def offer_help(record: dict, response: str) -> bool:
    """The last sentence offers more help ("Let me know if you have any other questions.")."""
    sentences = [s for s in _SENTENCE_END.split(response.strip()) if s.strip()]
    return bool(sentences) and any(o in sentences[-1].lower() for o in OFFERS)


def no_list(record: dict, response: str) -> bool:
    """No bulleted or numbered list lines and no markdown (bold, headings, code)."""
    return not _LIST_LINE.search(response) and not _MARKDOWN.search(response)


def key_term(record: dict, response: str) -> bool:
    """The answer names the question's key term (`record["key_term"]`, singular or plural)."""
    term = str(record.get("key_term") or "").lower().strip()
    if not term:
        raise ValueError(f"prompt {record.get('uuid', '?')}: the key_term check needs a non-empty 'key_term' field")
    text = response.lower()
    stems = {term, term[:-1] if term.endswith("s") else term, term[:-3] + "y" if term.endswith("ies") else term}
    return any(re.search(r"\b" + re.escape(s), text) for s in stems)


def no_exclamation(record: dict, response: str) -> bool:
    return "!" not in response


def thanks(record: dict, response: str) -> bool:
    """The first sentence thanks the user ("Thanks for asking", "Thank you for your question")."""
    sentences = [s for s in _SENTENCE_END.split(response.strip()) if s.strip()]
    return bool(sentences) and "thank" in sentences[0].lower()


def one_paragraph(record: dict, response: str) -> bool:
    """A single paragraph: no blank line inside the answer."""
    return "\n\n" not in response.strip() and "\n \n" not in response.strip()


def ifeval(record: dict, response: str) -> bool:
    """Every IFEval constraint of the prompt met (strict), for the IFEval-constraint principles."""
    from selfsteer.benchmark.realbench import checkers

    return all(checkers.score_record(record, response).followed)


HOUSE_RULES: dict[str, Callable[[dict, str], bool]] = {
    "greeting": greeting, "short": short, "offer_help": offer_help, "no_list": no_list,
    "key_term": key_term, "no_exclamation": no_exclamation, "thanks": thanks, "one_paragraph": one_paragraph,
}
CHECKS: dict[str, Callable[[dict, str], bool]] = {**HOUSE_RULES, "ifeval": ifeval}


def resolve_check(name: str) -> Callable[[dict, str], bool]:
    """The check called `name`; a ValueError lists the known names."""
    try:
        return CHECKS[name]
    except KeyError:
        raise ValueError(f"unknown check {name!r}; known checks: {sorted(CHECKS)}") from None

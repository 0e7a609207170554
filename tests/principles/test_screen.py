"""Degenerate principle replies (issue 16's SmolLM2 examples) are rejected, counted by reason, and retried."""

from __future__ import annotations

import pytest

from selfsteer.principles.library import fallback_pair
from selfsteer.principles.prompt import generate_principles
from selfsteer.principles.screen import reject_reason, strip_leading_echo

GOOD = "Explain why the calendar needs a leap day, step by step, and check the arithmetic."
BAD = "Keep the answer vague and skip every reason the calendar needs a leap day."


@pytest.mark.parametrize("text,reason", [
    ("1. **", "header_echo"),
    ("The bad guideline is:", "header_echo"),
    ("The bad guideline is:\nThe bad guideline is:", "header_echo"),
    ("### Bad Guidelines\n### Bad Guidelines", "header_echo"),
    ("**Good guideline:**", "header_echo"),
    ("Be vague.", "too_short"),
    ("ok", "too_short"),
    # Answers to the query instead of guidelines for answering it.
    ("The AI-Palm: The Perfect Tool for the Right Project", "answers_query"),
    ("Leap years keep the calendar in step with the Earth's orbit around the sun.", "answers_query"),
    ("Sure! Here are some tips for drawing daily: practice", "answers_query"),
    ("Raindrops on the roof\nwhispers of the grey sky\nspring is here", "answers_query"),
    # Seen from SmolLM2-135M: an answer that names "the answer" and "the question" is still an answer.
    ('The answer to the question "What should I pack for a three-day hiking trip?" is a', "answers_query"),
    (GOOD, None),
    (BAD, None),
    # The worked examples of the principle prompt itself pass.
    ("Begin with a guess instead of restating how many stickers Maria starts with.", None),
    ("Treat the request as harmless fun.", None),
    ("Answer in general terms that could apply to any programming language.", None),
])
def test_reject_reason(text, reason):
    assert reject_reason(text) == reason


def test_good_equal_to_bad_is_rejected_ignoring_case_spacing_and_punctuation():
    assert reject_reason("keep the ANSWER vague,  and skip every reason the calendar needs a leap day", other=BAD) \
        == "same_as_bad"
    assert reject_reason(GOOD, other=BAD) is None


def test_settings_turn_the_word_floor_and_the_answer_heuristic_off():
    assert reject_reason("Be vague.", min_words=1) is None
    assert reject_reason("Leap years keep the calendar in step.", reject_answers=False) is None
    assert reject_reason("1. **", min_words=1) == "header_echo"  # nothing but scaffolding


def test_a_copied_worked_example_is_rejected():
    from selfsteer.principles.prompt import EXAMPLE_GUIDELINES

    # SmolLM2-135M, asked about boiling an egg, repeated the stickers example's bad guideline.
    copied = "1. Begin with a guess instead of restating how many stickers Maria starts with. Combine the numbers"
    assert reject_reason(copied, examples=EXAMPLE_GUIDELINES) == "copies_example"
    assert reject_reason(copied) is None  # without the examples it reads as a guideline
    assert reject_reason(GOOD, examples=EXAMPLE_GUIDELINES) is None


def test_strip_leading_echo_keeps_the_guideline_after_it():
    assert strip_leading_echo("The bad guideline is: The bad guideline is: " + BAD) == BAD
    assert strip_leading_echo(BAD) == BAD


class Scripted:
    def __init__(self, *batches):
        self.batches = [list(b) for b in batches]

    def __call__(self, prompts):
        return self.batches.pop(0)


def test_generate_counts_each_rejection_retries_and_falls_back():
    # Q0: header echo, then a real bad text; its good text equals the bad one, then a real one.
    # Q1: an answer to the query every time: falls back after max_retries.
    complete = Scripted(["1. **", "Leap years keep the calendar in step with the sun."],
                        ["The bad guideline is: " + BAD, "Sure! Leap years exist because the year is 365.24 days."],
                        ["Sure! Leap years exist because the year is 365.24 days."],
                        [BAD], [GOOD])
    pairs, stats = generate_principles(["Q0", "Q1"], complete, max_retries=2)
    assert complete.batches == []
    assert pairs[0].source == "llm" and pairs[0].bad_principles == (BAD,) and pairs[0].good_principles == (GOOD,)
    assert pairs[1] == fallback_pair()
    assert stats["rejected_header_echo"] == 1 and stats["rejected_answers_query"] == 3
    assert stats["rejected_same_as_bad"] == 1 and stats["rejected_too_short"] == 0
    assert stats["parse_failures"] == 5 and stats["fallbacks"] == 1 and stats["requests"] == 7


def test_fallback_rate_above_the_threshold_is_reported_loudly(caplog):
    import logging

    from selfsteer.actors.principle import fallback_warning, write_principles
    from selfsteer.config.schema import load_config
    from selfsteer.data.prompts import PromptRecord

    stats = {"fallbacks": 3, "parse_failures": 7, "rejected_header_echo": 4, "rejected_answers_query": 2}
    line = fallback_warning(stats, 4, 0.5, round_index=2)
    assert line.startswith("PRINCIPLE WRITER FAILING: round 2: 75% of 4 prompts fell back")
    assert "header_echo=4, answers_query=2" in line and "empty: 1" in line
    assert fallback_warning(stats, 6, 0.5, 2) is None  # 50%: at the threshold, not above
    assert fallback_warning({"fallbacks": 0}, 0, 0.5, 2) is None

    # It is logged after a round whose writer only echoed headers (a scripted writer stands in for the LLM).
    cfg = load_config(None, ["principles.mode=llm", "principles.llm.max_retries=0"])
    prompts = [PromptRecord(uid=f"q{i}", index=i, prompt=f"question {i}?") for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="selfsteer.actors.principle"):
        pairs, stats = write_principles(cfg.principles, 0, prompts, 1, lambda texts, sampling: ["1. **"] * len(texts))
    assert stats["fallbacks"] == 2 and stats["rejected_header_echo"] == 2
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "100% of 2 prompts fell back" in caplog.records[0].message


def test_a_reply_of_headers_only_counts_as_a_header_echo_and_an_empty_one_does_not():
    pairs, stats = generate_principles(["Q0"], Scripted(["### Bad Guidelines\n### Bad Guidelines"], ["  "]),
                                       max_retries=1)
    assert pairs == [fallback_pair()]
    assert stats["rejected_header_echo"] == 1 and stats["parse_failures"] == 2

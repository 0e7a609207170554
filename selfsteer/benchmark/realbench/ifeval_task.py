"""Real questions with IFEval-style verifiable constraints, sized for a 135M model.

Each prompt is a short everyday question plus one constraint (half the prompts) or two (one on the
form of the answer, one on its content), phrased in plain words and checked by IFEval's checker
(`checkers.py`). Train and held-out prompts use disjoint questions, so a held-out gain is not a
memorized answer. Everything is deterministic from the seed. Records are IFEval's JSONL fields
(prompt, uuid, instruction_id_list, kwargs), which `data.prompts` reads as is.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

QUESTIONS = (
    "Why is the sky blue?", "What causes rain?", "How do plants make food?", "Why do we need sleep?",
    "What is a volcano?", "How does a bicycle stay upright?", "Why do leaves change color in autumn?",
    "What is the moon made of?", "How do bees make honey?", "Why is exercise good for you?",
    "What is a healthy breakfast?", "How can I save money each month?", "Why do cats purr?",
    "What is the water cycle?", "How do airplanes fly?", "What is a good way to learn a new language?",
    "Why do we have seasons?", "How does the heart pump blood?", "What is recycling?",
    "How can I fall asleep faster?", "What makes a good friend?", "Why do birds migrate?",
    "What is electricity?", "How do I make a cup of tea?", "Why is the ocean salty?",
    "What is a computer program?", "How can I stay focused while studying?", "What do dolphins eat?",
    "Why should we drink water?", "What is the sun?", "How do magnets work?", "What is a rainbow?",
    "How can I be more patient?", "Why do we yawn?", "What is a desert?", "How do fish breathe?",
    "What is a good hobby for a rainy day?", "Why do onions make you cry?", "How does a fridge keep food cold?",
    "What is the internet?", "How can I reduce stress?", "Why do dogs wag their tails?",
    "What is a forest?", "How do you plant a tree?", "What is gravity?", "Why is reading useful?",
    "How can I write a good email?", "What is a planet?", "Why do we brush our teeth?",
    "How does a camera take a picture?", "What is snow?", "How can I keep my room tidy?",
    "Why do stars twinkle?", "What is a museum?", "How do you cook rice?", "What is wind?",
    "Why is the grass green?", "How can I make new friends?", "What is a library for?",
    "How do trains work?", "Why do we celebrate birthdays?", "What is a river?",
    "How can I drink more water every day?", "What is thunder?", "Why do people travel?",
    "How do I take care of a houseplant?", "What is a map?", "Why do apples fall from trees?",
    "How can I be a better listener?", "What is bread made of?", "Why do we need vitamins?",
    "How does soap clean your hands?", "What is an island?", "How can I start running?",
)
KEYWORDS = ("simple", "important", "example", "because", "water", "people", "easy", "time")
FORBIDDEN = ("very", "really", "also", "just")
END_PHRASES = ("Is there anything else I can help with?", "Hope this helps.", "That is all.")
WORD_LIMITS = (20, 30, 50)


def _form(rng: random.Random) -> tuple[str, dict, str]:
    kind = rng.choice(("lowercase", "end", "quotation", "title", "postscript", "json"))
    if kind == "lowercase":
        return "change_case:english_lowercase", {}, "Write your whole answer in lowercase letters only."
    if kind == "end":
        phrase = rng.choice(END_PHRASES)
        return "startend:end_checker", {"end_phrase": phrase}, f'End your answer with the exact phrase "{phrase}"'
    if kind == "quotation":
        return "startend:quotation", {}, "Wrap your whole answer in double quotation marks."
    if kind == "title":
        return "detectable_format:title", {}, "Give your answer a title wrapped in double angular brackets, like <<my title>>."
    if kind == "postscript":
        return ("detectable_content:postscript", {"postscript_marker": "P.S."},
                "At the end of your answer, add a postscript starting with P.S.")
    return "detectable_format:json_format", {}, "Answer in JSON format."


def _content(rng: random.Random, allow_comma: bool) -> tuple[str, dict, str]:
    kinds = ("words", "keyword", "forbidden") + (("no_comma",) if allow_comma else ())
    kind = rng.choice(kinds)
    if kind == "words":
        n = rng.choice(WORD_LIMITS)
        return ("length_constraints:number_words", {"num_words": n, "relation": "less than"},
                f"Answer in fewer than {n} words.")
    if kind == "keyword":
        word = rng.choice(KEYWORDS)
        return "keywords:existence", {"keywords": [word]}, f'Use the word "{word}" in your answer.'
    if kind == "forbidden":
        word = rng.choice(FORBIDDEN)
        return "keywords:forbidden_words", {"forbidden_words": [word]}, f'Do not use the word "{word}".'
    return "punctuation:no_comma", {}, "Do not use any commas."


def make_record(question: str, rng: random.Random) -> dict:
    """One prompt: the question plus one or two constraints (never two that contradict each other)."""
    parts = []
    if rng.random() < 0.5:
        parts.append(_form(rng) if rng.random() < 0.5 else _content(rng, allow_comma=True))
    else:
        form = _form(rng)
        parts += [form, _content(rng, allow_comma=form[0] != "detectable_format:json_format")]
    text = " ".join([question] + [p[2] for p in parts])
    uid = uuid.UUID(int=random.Random(text).getrandbits(128), version=4)
    return {"prompt": text, "uuid": str(uid), "instruction_id_list": [p[0] for p in parts],
            "kwargs": [p[1] for p in parts]}


def split_questions(seed: int = 0, heldout: int = 24) -> tuple[list[str], list[str]]:
    """(train, held-out) questions, disjoint."""
    qs = list(QUESTIONS)
    random.Random(f"ifsplit:{seed}").shuffle(qs)
    return qs[heldout:], qs[:heldout]


def build_prompts(seed: int = 0, n_train: int = 256, n_heldout: int = 96) -> tuple[list[dict], list[dict]]:
    """(train, held-out) prompt records; each question is reused with different constraints."""
    train_q, held_q = split_questions(seed)
    out = []
    for name, qs, n in (("train", train_q, n_train), ("heldout", held_q, n_heldout)):
        rng = random.Random(f"ifprompts:{seed}:{name}")
        recs, seen = [], set()
        while len(recs) < n:
            rec = make_record(qs[len(recs) % len(qs)], rng)
            if rec["uuid"] in seen:  # the same question drew the same constraints: draw again
                continue
            seen.add(rec["uuid"])
            recs.append(rec)
        out.append(recs)
    return out[0], out[1]


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


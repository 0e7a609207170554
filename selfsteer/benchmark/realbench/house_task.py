"""The house-rules task: everyday questions, answered under house rules about the answer's form.

A real-model counterpart of the toy alignment task. The questions are written by the project from
topic lists and question patterns that fit each topic kind (foods, animals, household devices,
hobbies, weather and nature); each carries its key term (`key_term`, read by the `key_term`
rule). Train and held-out questions come from disjoint topics, so a held-out gain is not a
remembered answer. The prompt is the bare question: the rules live only in the principles, and
the gold report (`house_gold`) checks whether the policy follows them unprompted.
"""

from __future__ import annotations

import random
import uuid

# kind -> (question patterns, topics). {t} topic, {a} its article, {be} is/are, {Be} Is/Are.
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "food": (
        ("{Be} {t} good for your health?", "How do I keep {t} fresh at home?", "What is a simple recipe that uses {t}?",
         "Can you tell me a fun fact about {t}?", "Why do so many people enjoy {t}?"),
        ("rice", "honey", "yogurt", "spinach", "lentils", "broccoli", "salmon", "cheese", "bread", "pasta", "tofu",
         "garlic", "chocolate", "popcorn", "peanut butter", "green tea", "coffee", "oatmeal", "almonds", "tomatoes",
         "apples", "bananas", "blueberries", "olive oil", "mushrooms", "carrots", "potatoes", "eggs", "lemons",
         "cucumbers"),
    ),
    "animal": (
        ("Where do {t} live?", "What do {t} eat?", "How long do {t} usually live?", "Why are {t} important for nature?",
         "How do {t} take care of their young?"),
        ("owls", "dolphins", "bees", "penguins", "elephants", "frogs", "turtles", "wolves", "squirrels", "butterflies",
         "sharks", "horses", "parrots", "ants", "bats", "camels", "foxes", "octopuses", "hedgehogs", "whales",
         "rabbits", "crows", "giraffes", "beavers", "koalas", "snails", "eagles", "deer", "otters", "hummingbirds"),
    ),
    "device": (
        ("How does {a} {t} work?", "What is {a} {t} used for?", "How do I clean {a} {t} properly?",
         "What should I look for when buying {a} {t}?", "How long does {a} {t} usually last?"),
        ("bicycle", "refrigerator", "microwave", "compass", "thermometer", "umbrella", "kettle", "dishwasher",
         "vacuum cleaner", "smoke alarm", "washing machine", "flashlight", "toaster", "blender", "sewing machine",
         "calculator", "telescope", "printer", "ceiling fan", "electric toothbrush", "rice cooker", "air conditioner",
         "hair dryer", "bathroom scale", "alarm clock", "pressure cooker", "heat pump", "space heater",
         "solar panel", "doorbell"),
    ),
    "hobby": (
        ("How do I get started with {t}?", "What equipment do I need for {t}?", "How can I get better at {t}?",
         "Why do people enjoy {t}?", "How much time should a beginner spend on {t} each week?"),
        ("gardening", "swimming", "chess", "knitting", "running", "baking", "hiking", "painting", "photography", "yoga",
         "cycling", "fishing", "birdwatching", "journaling", "dancing", "rock climbing", "pottery", "meditation",
         "camping", "woodworking", "skateboarding", "tennis", "bowling", "sketching", "sailing", "surfing",
         "juggling", "origami", "archery", "calligraphy"),
    ),
    "nature": (
        ("What causes {t}?", "How do scientists study {t}?", "Can you explain {t} in simple words?",
         "{Be} {t} dangerous to people?", "What is the most interesting thing about {t}?"),
        ("earthquakes", "thunderstorms", "rainbows", "tides", "volcanoes", "hurricanes", "fog", "snowflakes",
         "eclipses", "droughts", "tornadoes", "avalanches", "hail", "dew", "lightning", "ocean waves", "sand dunes",
         "geysers", "glaciers", "floods", "heat waves", "wildfires", "coral reefs", "caves", "icebergs", "waterfalls",
         "frost", "sandstorms", "monsoons", "meteor showers"),
    ),
}
_MASS = {"rice", "honey", "yogurt", "spinach", "broccoli", "salmon", "cheese", "bread", "pasta", "tofu", "garlic",
         "chocolate", "popcorn", "peanut butter", "green tea", "coffee", "oatmeal", "olive oil", "fog", "hail", "dew",
         "lightning", "frost"}
HELDOUT_TOPICS_PER_KIND = 3  # x 5 kinds x 5 patterns = 75 held-out questions; 675 for training


def _fill(pattern: str, topic: str) -> str:
    be = "is" if topic in _MASS else "are"
    article = "an" if topic[0] in "aeiou" else "a"
    return pattern.format(t=topic, a=article, be=be, Be=be.capitalize())


def _record(kind: str, topic: str, question: str) -> dict:
    uid = uuid.UUID(int=random.Random(f"house:{question}").getrandbits(128), version=4)
    return {"prompt": question, "uuid": str(uid), "key_term": topic, "kind": kind}


def build_questions(split_seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held-out) question records; topics are disjoint, HELDOUT_TOPICS_PER_KIND per kind held out."""
    train, heldout = [], []
    for kind, (patterns, topics) in KINDS.items():
        order = list(topics)
        random.Random(f"house-split:{split_seed}:{kind}").shuffle(order)
        for i, topic in enumerate(order):
            dest = heldout if i < HELDOUT_TOPICS_PER_KIND else train
            dest += [_record(kind, topic, _fill(p, topic)) for p in patterns]
    random.Random(f"house-order:{split_seed}").shuffle(train)  # the run's cursor shuffles too; files stay mixed
    return train, heldout


MIN_DELTA, MAX_UNPROMPTED = 0.2, 0.6  # issue #25's rule for keeping a house rule


def select_rules(report: dict, min_delta: float = MIN_DELTA, max_unprompted: float = MAX_UNPROMPTED) -> list[str]:
    """Dimensions of a `selfsteer probe` report worth training on: good - bad compliance >= min_delta
    (the principle steers the behaviour), unprompted compliance < max_unprompted (room to improve),
    and, where the probe measured it, answers that stay on the question under the good principle
    (verdict not "derails": its y+ would teach the model to talk past the question)."""
    from selfsteer.algorithms.diagnostics import DERAILS

    return [r["dimension"] for r in report["dimensions"] if r.get("check") is not None
            and r["compliance_delta"] >= min_delta and r["compliance_none"] < max_unprompted
            and r.get("verdict") != DERAILS]

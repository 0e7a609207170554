"""Data phases on the real actors: an interrupted phase keeps its records and a rerun skips them."""

from __future__ import annotations

import json

import pytest

from selfsteer.recipe.records import principles_record

pytestmark = pytest.mark.slow


class Interrupt(Exception):
    pass


def test_an_interrupted_sso_data_phase_resumes_where_it_stopped(ray_local, tmp_path, toy_cache):
    from selfsteer.recipe.phases import build_sso_data
    from selfsteer.recipe.workbench import Workbench
    from selfsteer.recipe.settings import recipe_config
    from selfsteer.actors.inputs import resolve_model
    from selfsteer.toy.prompts import toy_prompts

    cfg = recipe_config("configs/recipe_tiny_cpu.yaml", [f"model.cache_dir={toy_cache}", "data.prompts_per_round=4"])
    rows = [principles_record(p["prompt"], p["uuid"], "Answer step by step.", "Answer at random.")
            for p in toy_prompts(10, seed=5)]
    principles = tmp_path / "principles.json"
    principles.write_text(json.dumps(rows, indent=2))
    out = tmp_path / "sso_data.json"
    side = tmp_path / "sso_data.json.partial.jsonl"

    def stop_after_first_chunk(phase, done, total):
        if done >= 4:
            raise Interrupt(phase)

    bench = Workbench(cfg)
    try:
        with pytest.raises(Interrupt):
            build_sso_data(bench, principles, out, model_path=resolve_model(cfg), progress=stop_after_first_chunk)
        first = [json.loads(line) for line in side.read_text().splitlines()]
        assert [r["uuid"] for r in first] == [r["uuid"] for r in rows[:4]] and not out.exists()

        stats = build_sso_data(bench, principles, out, model_path=resolve_model(cfg))
    finally:
        bench.shutdown()
    assert (stats["already_done"], stats["written"], stats["todo"]) == (4, 6, 6)
    records = json.loads(out.read_text())
    assert [r["uuid"] for r in records] == [r["uuid"] for r in rows]
    assert records[:4] == first  # the first run's samples were kept, not re-drawn
    assert not side.exists()
    # y^o is greedy (docs/concepts/sso.md §7, v2): the same prompt under no principle gives the same text in both runs.
    assert all(r["raw"][1]["value"] for r in records)

"""In-run gold evaluation through the real driver (README command 1's config): the engines are scored
on held-out prompts with the weights they hold, the scores equal a direct evaluation of the start
model and of the round's checkpoint, and a resumed run keeps its start baseline."""

from __future__ import annotations

import json
import logging

import pytest

pytestmark = pytest.mark.slow


def test_eval_scores_the_weights_the_run_trained_and_survives_a_resume(ray_local, tmp_path, toy_cache, caplog, monkeypatch):
    from selfsteer.benchmark import evaluation as E
    from selfsteer.toy import task as T
    from selfsteer.config.schema import load_config
    from selfsteer.run.driver import run
    from selfsteer.actors.inputs import resolve_model
    from selfsteer.utils.runtime import QUIET_KEYS, actor_env

    for key in QUIET_KEYS:  # quiet_libraries sets them in this process: restored after the test
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "run"
    overrides = ["rounds=2", f"output_dir={out}", f"model.cache_dir={toy_cache}", "task.sft_examples=2000",
                 "data.prompts_per_round=24", "eval.prompts=24", "eval.samples=2"]
    caplog.set_level(logging.INFO, logger="selfsteer")
    run(load_config("configs/alignment_tiny.yaml", overrides))

    rows = [json.loads(x) for x in (out / "eval" / "gold.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert "eval/win_rate_sampled" not in rows[0] and all(0 <= r["eval/win_rate_sampled"] <= 1 for r in rows[1:])
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2]  # round 0 is not a round: eval/gold.jsonl and TensorBoard only
    for m, r in zip(metrics, rows[1:]):
        assert m["eval/gold_sampled"] == pytest.approx(r["eval/gold_sampled"])
    assert (out / "eval" / "gold.png").read_bytes()[:4] == b"\x89PNG"
    summary = next(rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("held-out gold reward"))
    assert summary.splitlines()[2].split()[:2] == ["0", f"{rows[0]['eval/gold_greedy']:.3f}"]
    assert "round  2:" in summary

    # The engines answered with the start weights, then with round 2's: greedy scores equal a direct
    # HF evaluation of the start model and of the round-2 checkpoint on the same prompts.
    cfg = load_config("configs/alignment_tiny.yaml", overrides)
    prompts = T.balanced(T.split_prompts(cfg.task.split_seed)[1], 24, seed=cfg.task.split_seed)
    settings = E.EvalSettings(prompts=24, samples=1)
    start = E.evaluate(resolve_model(cfg), prompts, settings)
    after = E.evaluate(str(out / "checkpoints" / "round_0002"), prompts, settings)
    assert rows[0]["eval/gold_greedy"] == pytest.approx(start["greedy"]["gold"])
    assert rows[2]["eval/gold_greedy"] == pytest.approx(after["greedy"]["gold"])
    assert rows[2]["examples"][0]["response"] == after["greedy"]["examples"][0]["response"]

    # Library chatter is off in the driver and handed to every actor; every role runs on CPU here.
    env = actor_env(1)
    assert env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and env["DS_ACCELERATOR"] == "cpu"

    baseline = (out / "eval" / "start_scores.json").read_bytes()
    (out / "eval" / "gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + [{**rows[2], "round": 3}]))
    run(load_config("configs/alignment_tiny.yaml", [*overrides, "rounds=3"]), resume=True)  # a stale row 3 is re-done
    resumed = [json.loads(x) for x in (out / "eval" / "gold.jsonl").read_text().splitlines()]
    assert [r["round"] for r in resumed] == [0, 1, 2, 3]
    assert resumed[:3] == rows  # the start row is not re-scored on the resumed weights
    assert (out / "eval" / "start_scores.json").read_bytes() == baseline
    assert 0 <= resumed[3]["eval/win_rate_sampled"] <= 1

"""In-run gold evaluation (`eval.every`): config checks, metrics, summary, plot and resume bookkeeping.

The end-to-end path (engines answering, a resumed run keeping its start baseline) is in
tests/test_gold_eval_run.py (slow).
"""

import json
import random

import pytest

from selfsteer.benchmark import evaluation as E
from selfsteer.toy import task as T
from selfsteer.config.schema import ConfigError, load_config
from selfsteer.online import gold_eval as G


def _result(follow: bool, baseline=None, n: int = 8):
    """`evaluate`'s result for task responses that meet every rule (follow) or none, scored by the task."""
    rng = random.Random(0)
    prompts = T.balanced(T.split_prompts(0)[1], n, seed=0)
    responses = [[T.synth_response(p, {d: follow for d in T.DIMENSIONS}, rng)] for p in prompts]
    scores = E.score(prompts, responses)
    out = {"scores": {}}
    for mode in G.MODES:
        out[mode] = E.summarize(scores, responses)
        out[mode]["examples"] = [{"prompt": p.text, "response": r[0]} for p, r in zip(prompts[:4], responses)]
        out["scores"][mode] = scores
        if baseline is not None:
            out[mode]["win_rate"] = E.win_rate(scores, baseline[mode])
    return out


def test_eval_needs_the_task_prompts_and_trained_engines():
    with pytest.raises(ConfigError, match="data.prompts=task"):
        load_config("configs/tiny_cpu.yaml", ["eval.every=1"])
    with pytest.raises(ConfigError, match="update_weights=false"):
        load_config("configs/alignment_tiny.yaml", ["rollout.update_weights=false"])
    with pytest.raises(ConfigError, match="eval.samples"):
        load_config("configs/alignment_tiny.yaml", ["eval.samples=0"])
    assert load_config("configs/alignment_tiny.yaml", ["eval.every=0", "rollout.update_weights=false"]).eval.every == 0


def test_metrics_and_summary_show_the_gain_over_the_start():
    start = _result(follow=False)
    after = _result(follow=True, baseline=start["scores"])
    m0, m1 = G.flat_metrics(start), G.flat_metrics(after)
    # Responses meeting no rule / every rule: gold 0 and 1 (hand values of the task's 5 rules).
    assert m0["eval/gold_greedy"] == 0.0 and m1["eval/gold_greedy"] == 1.0
    assert "eval/win_rate_sampled" not in m0 and m1["eval/win_rate_sampled"] == 1.0  # every answer beats its baseline
    assert m1["eval/Politeness_sampled"] == 1.0
    rows = [{"round": 0, **m0, "examples": start["greedy"]["examples"]},
            {"round": 3, **m1, "examples": after["greedy"]["examples"]}]
    text = G.summary(rows, 8, E.EvalSettings(samples=4))
    lines = text.splitlines()
    assert lines[2].split() == ["0", "0.000", "0.000", "-", f"{m0['eval/length_sampled']:.1f}"]
    assert lines[3].split() == ["3", "1.000", "1.000", "1.000", f"{m1['eval/length_sampled']:.1f}"]
    assert lines[4] == f"prompt:   {start['greedy']['examples'][0]['prompt']}"
    assert lines[6] == f"round  3: {after['greedy']['examples'][0]['response']}"


def test_rows_of_rounds_a_resume_redoes_are_dropped_and_the_baseline_kept(tmp_path):
    cfg = load_config("configs/alignment_tiny.yaml", ["eval.prompts=10", "rounds=4"])
    run_dir = tmp_path / "run"
    (run_dir / "eval").mkdir(parents=True)
    rows = [{"round": r, "eval/gold_greedy": r / 10, "examples": []} for r in (0, 1, 2, 3)]
    (run_dir / "eval" / "gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "eval" / "start_scores.json").write_text(json.dumps({"greedy": [[{"gold": 0.2}]]}))

    gold = G.GoldEval(cfg, run_dir, last_finished=2)  # rounds 3.. are re-run
    assert [r["round"] for r in gold.rows] == [0, 1, 2]
    assert [json.loads(x)["round"] for x in (run_dir / "eval" / "gold.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert gold.start_scores == {"greedy": [[{"gold": 0.2}]]}
    assert gold.start(pool=None) == {}  # a resume never scores its resumed weights as the start
    assert len(gold.prompts) == 10 and {p.kind for p in gold.prompts} == {p.kind for p in T.all_prompts()}
    assert [r for r in range(1, 5) if gold.due(r)] == [1, 2, 3, 4]
    every3 = G.GoldEval(load_config("configs/alignment_tiny.yaml", ["eval.every=3", "rounds=7"]), tmp_path / "b")
    assert [r for r in range(1, 8) if every3.due(r)] == [3, 6, 7]  # and always the last round


def test_plot_writes_a_png(tmp_path):
    start = _result(follow=False)
    rows = [{"round": 0, **G.flat_metrics(start)}, {"round": 1, **G.flat_metrics(_result(True, start["scores"]))}]
    path = G.plot(rows, tmp_path / "gold.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000

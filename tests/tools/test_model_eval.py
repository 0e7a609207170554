"""`selfsteer eval` (generations, gold scores, win rate) and `selfsteer export --format alpaca_eval` on the toy model."""

from __future__ import annotations

import json
import shutil

import pytest

from selfsteer.cli.main import main
from selfsteer.tools.model_eval import export_alpaca_eval, resolve_checkpoint, run_eval


@pytest.fixture(scope="module")
def task_prompts(tmp_path_factory):
    from selfsteer.toy import task as T

    prompts = T.all_prompts()[:4]
    path = tmp_path_factory.mktemp("prompts") / "task.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.text, "uuid": f"t{i}"}) + "\n" for i, p in enumerate(prompts)))
    return path, prompts


@pytest.fixture(scope="module")
def other_model(toy_cache):
    from selfsteer.toy import build_toy_model

    return build_toy_model(toy_cache, seed=1)


def test_eval_scores_with_the_task_gold_and_compares_against_a_baseline(toy_model_path, other_model, task_prompts,
                                                                        tmp_path):
    from selfsteer.toy import task as T

    path, prompts = task_prompts
    out = tmp_path / "eval.jsonl"
    summary = run_eval(str(toy_model_path), str(path), baseline=str(other_model), samples=2, max_new_tokens=8,
                       out=str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["uuid"] for r in rows] == ["t0", "t1", "t2", "t3"] and summary["scorer"] == "task"
    for row, prompt in zip(rows, prompts):
        assert row["prompt"] == prompt.text and len(row["samples"]) == 2 and len(row["baseline_samples"]) == 2
        assert row["gold_greedy"] == T.gold_scores(prompt, row["greedy"])["gold"]
        assert row["gold_samples"] == [T.gold_scores(prompt, s)["gold"] for s in row["samples"]]
        expected = 1.0 if row["gold_greedy"] > row["baseline_gold_greedy"] else \
            0.5 if row["gold_greedy"] == row["baseline_gold_greedy"] else 0.0
        assert row["win_greedy"] == expected
    assert summary["gold_greedy"] == pytest.approx(sum(r["gold_greedy"] for r in rows) / 4, abs=1e-4)
    assert summary["win_rate_greedy"] == pytest.approx(sum(r["win_greedy"] for r in rows) / 4, abs=1e-4)
    assert json.loads((tmp_path / "eval.jsonl.summary.json").read_text()) == summary

    # AlpacaEval's input: exactly instruction, output, generator.
    alpaca = json.loads(export_alpaca_eval(str(out), str(tmp_path / "alpaca.json")).read_text())
    assert alpaca == [{"instruction": r["prompt"], "output": r["greedy"], "generator": toy_model_path.name} for r in rows]
    sampled = json.loads(export_alpaca_eval(str(out), str(tmp_path / "s.json"), which="sample", generator="mine").read_text())
    assert [a["output"] for a in sampled] == [r["samples"][0] for r in rows] and {a["generator"] for a in sampled} == {"mine"}


def test_eval_without_a_scorer_and_a_run_directory(toy_model_path, tmp_path, capsys):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"prompt": "tell a story about the sea ."}, {"prompt": "name a red fruit ."}]))
    run = tmp_path / "run"
    for r in (1, 2):
        shutil.copytree(toy_model_path, run / "checkpoints" / f"round_000{r}")
    assert resolve_checkpoint(run) == run / "checkpoints" / "round_0002"
    out = tmp_path / "e.jsonl"
    assert main(["eval", str(run), "--prompts", str(prompts), "--samples", "0", "--max-new-tokens", "6",
                 "--out", str(out)]) == 0
    assert "scorer=none" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["samples"] == [] and "gold_greedy" not in rows[0]
    assert json.loads(export_alpaca_eval(str(out), str(tmp_path / "a.json")).read_text())[0]["generator"] == "run-round_0002"
    with pytest.raises(ValueError, match=r"prompt row 0 .*not one of the alignment task's prompts"):
        run_eval(str(toy_model_path), str(prompts), scorer="task", samples=0, max_new_tokens=2)


def test_export_from_a_run_takes_the_last_rounds_bare_responses(tmp_path, capsys):
    run = tmp_path / "myrun"
    for r, raw in ((1, "old"), (2, "new")):
        d = run / "rounds" / f"round_000{r}"
        d.mkdir(parents=True)
        (d / "triples.jsonl").write_text(json.dumps({"instruction": "q ?", "raw": raw, "chosen": "c"}) + "\n")
    out = tmp_path / "alpaca.json"
    assert main(["export", str(run), "--format", "alpaca_eval", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == [{"instruction": "q ?", "output": "new", "generator": "myrun"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q"}\n')
    assert main(["export", str(bad), "--format", "alpaca_eval", "--out", str(out)]) == 2
    assert "bad.jsonl: line 1 lacks 'prompt' or 'greedy'" in capsys.readouterr().err

"""`selfsteer eval` (generations, gold and constraint scores, win rate) and `selfsteer export --format alpaca_eval`
on the toy model."""

from __future__ import annotations

import json
import shutil

import pytest

from selfsteer.cli.main import main
from selfsteer.tools.export import export_alpaca_eval
from selfsteer.tools.model_eval import resolve_checkpoint, run_eval


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


def test_export_of_a_run_answers_with_its_final_checkpoint_never_its_training_samples(toy_model_path, other_model,
                                                                                        tmp_path, capsys):
    run = tmp_path / "myrun"
    for r, model in ((1, other_model), (2, toy_model_path)):
        d = run / "rounds" / f"round_000{r}"
        d.mkdir(parents=True)
        (d / "triples.jsonl").write_text(json.dumps({"instruction": "name a red fruit .", "raw": "SAMPLED"}) + "\n")
        shutil.copytree(model, run / "checkpoints" / f"round_000{r}")
    out = tmp_path / "alpaca.json"
    # without prompts: refused in one line that says what to do, and nothing is written
    assert main(["export", str(run), "--format", "alpaca_eval", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run directory" in err and "selfsteer eval" in err and "--prompts" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    # AlpacaEval's own question file (its prompt field is "instruction") answered by the final checkpoint, greedily
    questions = tmp_path / "alpaca_eval.json"
    questions.write_text(json.dumps([{"instruction": "name a red fruit .", "output": "x", "generator": "gpt4",
                                      "dataset": "toy"}, {"instruction": "tell a story about the sea ."}]))
    assert main(["export", str(run), "--prompts", str(questions), "--format", "alpaca_eval", "--out", str(out),
                 "--max-new-tokens", "6"]) == 0
    exported = json.loads(out.read_text())
    direct = run_eval(str(toy_model_path), str(questions), max_new_tokens=6, out=str(tmp_path / "direct.jsonl"))
    assert direct["samples"] == 0
    answers = [json.loads(line)["greedy"] for line in (tmp_path / "direct.jsonl").read_text().splitlines()]
    assert exported == [{"instruction": q, "output": a, "generator": "myrun-round_0002"}
                        for q, a in zip(["name a red fruit .", "tell a story about the sea ."], answers)]
    assert all(e["output"] != "SAMPLED" for e in exported)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q"}\n')
    assert main(["export", str(bad), "--format", "alpaca_eval", "--out", str(out)]) == 2
    assert "bad.jsonl: line 1 lacks 'prompt' or 'greedy'" in capsys.readouterr().err


# New everyday prompts with IFEval constraints the toy model's answers follow (no comma, a generous word
# limit) and do not (a keyword it never says, quotes, a title), written for this test only.
HIDDEN = [
    {"key": 101, "prompt": "tell a story about the sea . Do not use any commas. Use the word lighthouse.",
     "instruction_id_list": ["punctuation:no_comma", "keywords:existence"], "kwargs": [{}, {"keywords": ["lighthouse"]}]},
    {"key": 102, "prompt": "name a red fruit . Answer in fewer than 300 words.",
     "instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 300, "relation": "less than"}]},
    {"key": 103, "prompt": "what is rain ? Wrap the answer in double quotes and give it a <<title>>.",
     "instruction_id_list": ["startend:quotation", "detectable_format:title"], "kwargs": [{}, {}]},
    {"key": 104, "prompt": "list three birds . Use exactly 3 bullet points.",
     "instruction_id_list": ["detectable_format:number_bullet_lists"], "kwargs": [{"num_bullets": 3}]},
]


def test_a_new_constraint_file_scores_through_eval_as_through_the_benchmarks_checkers(toy_model_path, other_model,
                                                                                      tmp_path, capsys):
    from if_verifiable.common import evaluate_instructions
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    from selfsteer.benchmark.realbench import checkers as C

    path = tmp_path / "hidden.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HIDDEN))
    out = tmp_path / "eval.jsonl"
    assert main(["eval", str(toy_model_path), "--prompts", str(path), "--baseline", str(other_model), "--samples", "1",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "eval.jsonl.summary.json").read_text())
    assert summary["scorer"] == "ifeval" and summary["scored_prompts"] == 3
    assert summary["unscored"] == {"104": ["detectable_format:number_bullet_lists"]}  # named, not scored 0
    assert "104: detectable_format:number_bullet_lists" in printed and "prompt_loose" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["uuid"] for r in rows] == ["101", "102", "103", "104"] and "constraints_greedy" not in rows[3]
    followed = {"": [], "baseline_": []}
    for rec, row in zip(HIDDEN[:3], rows):
        for prefix in followed:
            for answer, got in [(row[f"{prefix}greedy"], row[f"{prefix}constraints_greedy"])] + \
                    list(zip(row[f"{prefix}samples"], row[f"{prefix}constraints_samples"])):
                assert tuple(got["strict"]) == C.score_record(rec, answer).followed
                ref, _ = evaluate_instructions(answer, rec["instruction_id_list"], rec["kwargs"], rec["prompt"],
                                               INSTRUCTION_DICT)
                assert got["loose"] == [r.loose_pass for r in ref]
            followed[prefix].append(C.score_record(rec, row[f"{prefix}greedy"]))
    for prefix, scores in followed.items():
        acc = C.accuracy(scores)
        assert summary[f"{prefix}prompt_strict"] == pytest.approx(acc["prompt_strict"], abs=1e-4)
        assert summary[f"{prefix}instruction_strict"] == pytest.approx(acc["instruction_strict"], abs=1e-4)
    assert 0 < summary["instruction_strict"] < 1  # the file has constraints the answers follow and ones they miss


def test_ifbench_rows_score_through_eval_as_through_ifbench(toy_model_path, tmp_path):
    pytest.importorskip("ifbench", reason="pip install -e '.[realbench]'")
    from selfsteer.benchmark.realbench import ifbench as B

    bench = B.load()
    scored, left_out = B.test_set(bench)
    recs = scored[:3] + left_out[:1]
    path = tmp_path / "ifbench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary = run_eval(str(toy_model_path), str(path), max_new_tokens=8, out=str(tmp_path / "e.jsonl"))
    assert summary["scorer"] == "ifbench" and list(summary["unscored"]) == [str(left_out[0]["key"])]
    answers = [json.loads(line)["greedy"] for line in (tmp_path / "e.jsonl").read_text().splitlines()][:3]
    ref = B.score(bench, scored[:3], answers)
    for mode in ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose"):
        assert summary[mode] == pytest.approx(ref[mode], abs=1e-4)


def test_eval_reads_alpacaevals_instruction_and_ifevals_key(toy_model_path, tmp_path):
    path = tmp_path / "alpaca_eval.json"
    path.write_text(json.dumps([{"instruction": "name a red fruit .", "output": "apple", "generator": "gpt4",
                                 "dataset": "toy"}]))
    out = tmp_path / "e.jsonl"
    assert run_eval(str(toy_model_path), str(path), max_new_tokens=4, out=str(out))["prompts"] == 1
    assert json.loads(out.read_text())["prompt"] == "name a red fruit ."
    keyed = tmp_path / "k.jsonl"
    keyed.write_text(json.dumps(HIDDEN[1]) + "\n")
    run_eval(str(toy_model_path), str(keyed), max_new_tokens=4, out=str(out))
    assert json.loads(out.read_text())["uuid"] == "102"


def test_bad_rows_and_missing_fields_are_one_line_and_exit_2(toy_model_path, tmp_path, capsys):
    rows = tmp_path / "r.jsonl"
    rows.write_text(json.dumps({**HIDDEN[1], "kwargs": [{"num_words": 300, "relation": "roughly"}]}) + "\n")
    model = toy_model_path
    assert main(["eval", str(model), "--prompts", str(rows)]) == 2
    err = capsys.readouterr().err
    assert "r.jsonl: row 0 (102): kwargs" in err and "do not suit" in err and "Traceback" not in err
    neither = tmp_path / "n.jsonl"
    neither.write_text('{"question": "q"}\n')
    assert main(["eval", str(model), "--prompts", str(neither)]) == 2
    assert "eval reads 'prompt' or AlpacaEval's 'instruction'" in capsys.readouterr().err


def test_help_names_the_scorers_the_fields_and_what_samples_cost(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("ifeval", "ifbench", "instruction_id_list", "'instruction'", "strict and loose",
                   "default 0: greedy only", "1 doubles the time"):
        assert needle in text, needle


def test_eval_shows_progress_and_says_what_samples_cost(toy_model_path, tmp_path, capsys, monkeypatch):
    from selfsteer.benchmark.realbench import evaluate

    monkeypatch.setattr(evaluate, "PROGRESS_DELAY_S", 0)  # the bar waits 3 s by default; these answers take less
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "name a red fruit ."}\n{"prompt": "tell a story about the sea ."}\n')
    assert main(["eval", str(toy_model_path), "--prompts", str(path), "--samples", "2", "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert "model greedy" in captured.err and "model sampled x2" in captured.err and "2/2" in captured.err
    assert "4/4" in captured.err  # 2 prompts x 2 samples
    assert "sampled answer(s) a prompt took" in captured.out and "--samples 0: greedy only" in captured.out

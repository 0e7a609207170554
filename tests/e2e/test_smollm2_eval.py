"""`selfsteer eval` on SmolLM2-135M with the shipped everyday prompts: the table equals the benchmark's checkers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.recipe.conftest import smollm2_gguf

pytestmark = pytest.mark.slow
PROMPTS = Path(__file__).resolve().parents[2] / "configs" / "real_model" / "everyday_prompts.jsonl"


def test_smollm2_answers_score_through_eval_as_through_the_benchmarks_checkers(tmp_path, capsys):
    pytest.importorskip("if_verifiable", reason="pip install -e '.[realbench]'")
    from selfsteer.benchmark.realbench import checkers as C
    from selfsteer.cli.main import main
    from selfsteer.tools.gguf_import import import_gguf
    from selfsteer.tools.model_eval import load_rows

    model = import_gguf(smollm2_gguf(), tmp_path / "smollm2")
    rows = load_rows(PROMPTS)[1][:6]
    prompts = tmp_path / "six.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval.jsonl"
    assert main(["eval", str(model), "--prompts", str(prompts), "--max-new-tokens", "48", "--out", str(out)]) == 0
    assert "ifeval constraints: 6 of 6 prompts scored" in capsys.readouterr().out
    answers = [json.loads(line)["greedy"] for line in out.read_text().splitlines()]
    expected = C.accuracy([C.score_record(r, a) for r, a in zip(rows, answers)])
    summary = json.loads((tmp_path / "eval.jsonl.summary.json").read_text())
    assert summary["prompt_strict"] == pytest.approx(expected["prompt_strict"], abs=1e-4)
    assert summary["instruction_strict"] == pytest.approx(expected["instruction_strict"], abs=1e-4)
    assert all(a.strip() for a in answers)  # a real model answers every question

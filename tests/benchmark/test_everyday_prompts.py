"""The SmolLM2 config's evaluation prompts: shipped, scorable offline, and disjoint from the benchmark's questions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("if_verifiable", reason="pip install -e '.[realbench]'")

from selfsteer.benchmark.realbench import constraints as K  # noqa: E402
from selfsteer.benchmark.realbench import ifeval_task as T  # noqa: E402
from selfsteer.tools.model_eval import load_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "smollm2_135m_cpu.yaml"


def _prompts_file() -> Path:
    line = next(ln for ln in CONFIG.read_text().splitlines() if ln.startswith("# Evaluate:"))
    return ROOT / re.search(r"--prompts (\S+)", line).group(1)


def test_the_configs_evaluate_line_names_a_shipped_file_of_scorable_rows():
    path = _prompts_file()
    assert path.is_file(), path
    records, rows = load_rows(path)
    assert 30 <= len(records) <= 40 and rows is not None
    assert K.pick_kind([r["instruction_id_list"] for r in rows]) == "ifeval"
    assert K.prepare("ifeval", rows, str(path)).unscored == {}  # every checker runs offline


def test_no_question_overlaps_the_benchmarks_questions_or_held_out_prompts():
    records, _ = load_rows(_prompts_file())
    mine = [r.prompt.lower() for r in records]
    for question in T.QUESTIONS:  # train and held-out questions of every split seed
        assert not any(question.lower() in p for p in mine), question
    for seed in (0, 1, 2):
        held = {r["prompt"].lower() for r in T.build_prompts(seed, n_train=0, n_heldout=96)[1]}
        assert not held & set(mine)
    assert len(set(mine)) == len(mine)

"""One parser, one dispatch, one run path: `selfsteer run` and the `ray job submit` entry refuse the
same bad start with the same line and exit status, and every subcommand names its handler."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import datasets  # noqa: F401  (imported at collection: its log handler keeps pytest's stream, not one test's capsys)
import pytest

from selfsteer.cli import recipe
from selfsteer.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny_cpu.yaml")


def _ray_job_main():
    spec = importlib.util.spec_from_file_location("online_sso_entry", REPO / "ray_jobs" / "online_sso.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _said(err: str) -> list[str]:
    """The lines the entry printed itself (log lines carry a timestamp first)."""
    return [line for line in err.splitlines() if line.startswith("selfsteer")]


@pytest.mark.parametrize("case", ["unknown_key", "bad_value", "bad_prompts", "holds_a_run"])
def test_run_and_the_ray_job_refuse_a_bad_start_alike(tmp_path, capsys, case):
    out = tmp_path / "run"
    words = [f"output_dir={out}"]
    if case == "unknown_key":
        words.append("trainer.lrr=0.1")
    elif case == "bad_value":
        words.append("trainer.lr=nan")
    elif case == "bad_prompts":
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text('{"prompt": "ok"}\n{"prompt": \n')
        words.append(f"data.prompts={prompts}")
    else:
        (out / "rounds" / "round_0001").mkdir(parents=True)
        (out / "config.yaml").write_text("rounds: 1\n")
        (out / "state.json").write_text(json.dumps({"round": 1}))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    rc_run = main(["run", TINY, *words])
    said_run = _said(capsys.readouterr().err)
    rc_job = _ray_job_main()(["--config", TINY, *words])
    said_job = _said(capsys.readouterr().err)

    assert rc_run == rc_job == 2
    assert len(said_run) == 1 and said_run == said_job, (said_run, said_job)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_every_subcommand_names_its_handler():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert {"run", "scale", "plan", "eval", "export", "import-gguf", "probe", "principles", "sso-data", "train",
            "dpo-data", "pipeline", "convert-ultrafeedback", "serve"} == set(sub.choices)
    for name, command in sub.choices.items():
        assert callable(command.get_default("handler")), name


def test_the_recipe_module_runs_the_same_handlers(tmp_path, capsys):
    words = ["convert-ultrafeedback", str(tmp_path / "missing.parquet"), str(tmp_path / "p.json")]
    assert recipe.main(words) == 2
    from_recipe = capsys.readouterr().err
    assert main(words) == 2
    assert from_recipe == capsys.readouterr().err and from_recipe.startswith("selfsteer convert-ultrafeedback: ")
    assert not (tmp_path / "p.json").exists()


def test_arguments_that_do_not_go_together_end_as_usage_errors(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(Path(TINY).read_text())  # --resume reads the run's own config first
    for words, said in ((["run"], "run needs a CONFIG or --resume RUN_DIR"),
                        (["run", "--resume", str(tmp_path), "--overwrite", "rounds=2"], "give one"),
                        (["eval", "m", "--prompts", "p", "rounds=2"], "unrecognized arguments: rounds=2")):
        with pytest.raises(SystemExit) as exit_:
            main(words)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("usage: selfsteer") and said in err, err

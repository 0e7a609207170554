"""The recipe's subcommands refuse bad input before any actor starts, and lose nothing already written."""

from __future__ import annotations

import json

from selfsteer.cli.recipe import main
from selfsteer.recipe.records import principles_record

from .conftest import write_prompts


def _args(toy_cache, *args, overrides=()):
    # Overrides last, as one group (argparse takes one run of positionals).
    return [*args, "--config", "configs/recipe_tiny_cpu.yaml", f"model.cache_dir={toy_cache}", *overrides]


def test_bad_prompts_leave_the_existing_output_untouched(tmp_path, toy_cache, capsys):
    output = tmp_path / "principles.json"
    finished = json.dumps([principles_record("a", "1", "g", "b")], indent=2)
    output.write_text(finished)
    side = tmp_path / "principles.json.partial.jsonl"
    side.write_text(json.dumps(principles_record("b", "2", "g", "b")) + "\n")
    bad = tmp_path / "prompts.json"
    bad.write_text(json.dumps([{"prompt": "a", "uuid": "1"}, {"prompt": "b", "uuid": "2"}, {"prompt": 3, "uuid": "3"}]))
    code = main(_args(toy_cache, "principles", "--input", str(bad), "--output", str(output)))
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}: row 2: field 'prompt' must be a string, got int" in err and "--skip-bad" in err
    assert output.read_text() == finished and side.read_text().count("\n") == 1


def test_train_refuses_to_overwrite_a_model(tmp_path, toy_cache, capsys):
    target = tmp_path / "generator"
    target.mkdir()
    (target / "config.json").write_text("{}")
    code = main(_args(toy_cache, "train", "--algo", "sso", "--input", str(tmp_path / "sso.json"),
                      "--output", str(target)))
    assert code == 2 and "already holds a model" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    code = main(_args(toy_cache, "train", "--algo", "dpo", "--input", str(tmp_path / "dpo.json"), "--output",
                      str(tmp_path / "notes")))
    assert code == 2 and "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_dpo_data_needs_a_generator_model(tmp_path, toy_cache, capsys):
    principles = tmp_path / "principles.json"
    principles.write_text(json.dumps([principles_record("a", "1", "g", "b")]))
    code = main(_args(toy_cache, "dpo-data", "--input", str(principles), "--output", str(tmp_path / "dpo.json"),
                      "--generator", str(tmp_path / "no-model")))
    assert code == 2 and "no-model' is not a local HF model directory" in capsys.readouterr().err


def test_wrong_record_kind_is_named(tmp_path, toy_cache, capsys):
    prompts = write_prompts(tmp_path / "prompts.json", 2)
    code = main(_args(toy_cache, "sso-data", "--input", str(prompts), "--output", str(tmp_path / "sso.json")))
    assert code == 2 and "missing field 'principles'" in capsys.readouterr().err


def test_bad_config_key(tmp_path, toy_cache, capsys):
    prompts = write_prompts(tmp_path / "prompts.json", 2)
    code = main(_args(toy_cache, "principles", "--input", str(prompts), "--output", str(tmp_path / "p.json"),
                      overrides=["principles.llm.sorce=http"]))
    assert code == 2 and "principles.llm.sorce" in capsys.readouterr().err

"""A damaged checkpoint is named in one line (exit 2 from the CLI), built from the toy model per case."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from selfsteer.cli.main import main
from selfsteer.utils.model_dir import ModelDirError, check_model_dir


def _truncate(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:len(data) // 2])


CASES = {
    "truncated safetensors": (_truncate, r"model\.safetensors: not a readable safetensors file .*not fully covered"),
    "random safetensors": (lambda d: (d / "model.safetensors").write_bytes(os.urandom(4096)),
                           r"model\.safetensors: not a readable safetensors file"),
    "no weights file": (lambda d: (d / "model.safetensors").unlink(), r": no weights file \(model\.safetensors"),
    "broken config.json": (lambda d: (d / "config.json").write_text('{"model_type": "llama", '),
                           r"config\.json: not valid JSON"),
    "empty config.json": (lambda d: (d / "config.json").write_text("{}"), r"config\.json: no 'model_type'"),
    "unknown model_type": (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "no-such-arch"})),
                           r"config\.json: model_type 'no-such-arch' is not one transformers knows"),
    "no tokenizer files": (lambda d: [(d / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
                           r": no tokenizer files"),
    "missing index shard": (lambda d: (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00002-of-00002.safetensors"}})), r"names shard\(s\) that are missing"),
}


@pytest.fixture
def damaged(toy_model_path, tmp_path, request):
    damage, pattern = CASES[request.param]
    model = tmp_path / "ckpt"
    shutil.copytree(toy_model_path, model)
    damage(model)
    return model, pattern


def test_the_toy_model_passes(toy_model_path):
    assert check_model_dir(toy_model_path) == toy_model_path


@pytest.mark.parametrize("damaged", list(CASES), indirect=True)
def test_each_damage_is_one_line_naming_the_path(damaged):
    model, pattern = damaged
    with pytest.raises(ModelDirError, match=pattern) as info:
        check_model_dir(model)
    assert str(model) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("damaged", ["truncated safetensors", "broken config.json", "no tokenizer files"], indirect=True)
def test_eval_and_a_run_directory_refuse_with_exit_2(damaged, tmp_path, capsys):
    model, pattern = damaged
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "name a red fruit ."}\n')
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(model, run / "checkpoints" / "round_0002")  # the final checkpoint is the damaged one
    for target in (model, run):
        assert main(["eval", str(target), "--prompts", str(prompts), "--max-new-tokens", "2"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert str(model if target == model else run / "checkpoints" / "round_0002") in err

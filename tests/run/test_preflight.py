"""Checks before Ray starts: bad values and inputs end in exit status 2 naming the key or file, and
an output_dir holding a run is never touched without --resume or --overwrite."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from selfsteer.run import preflight
from selfsteer.cli.main import main

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml")


def _run(capsys, *words):
    rc = main(["run", *words])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("override, named", [
    ("save_every=0", "save_every"),
    ("trainer.lr=nan", "trainer.lr"),
    ("trainer.lr=inf", "trainer.lr"),
    ("trainer.lr=0", "trainer.lr"),
    ("loss.beta=nan", "loss.beta"),
    ("ray.call_timeout_s=0", "ray.call_timeout_s"),
    ("ray.startup_timeout_s=-5", "ray.startup_timeout_s"),
    ("sync.timeout_s=0", "sync.timeout_s"),
    ("trainer.epochs_per_round=0", "trainer.epochs_per_round"),
    ("trainer.grad_clip=-1", "trainer.grad_clip"),
    ("ray.max_restarts=-2", "ray.max_restarts"),
    ("reference.device=gpu", "reference.device"),
])
def test_bad_values_exit_2_naming_the_key(tmp_path, capsys, override, named):
    rc, err = _run(capsys, TINY, override, f"output_dir={tmp_path / 'run'}")
    assert rc == 2 and named in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def _no_template_model(toy_model_path, dest):
    shutil.copytree(toy_model_path, dest)
    cfg_path = dest / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(tok_cfg))
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    return dest


@pytest.mark.parametrize("case", ["library", "no_template", "missing_model", "missing_oracle", "bad_prompts", "non_utf8",
                                  "too_few_prompts", "output_under_a_file", *(
                                      [] if torch.cuda.is_available() else ["trainer_cuda", "rollout_cuda"])])
def test_bad_inputs_exit_2_naming_the_file_or_key(tmp_path, capsys, toy_model_path, case):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i} ?"}) + "\n" for i in range(3)))
    out = tmp_path / "run"
    if case == "library":
        lib = tmp_path / "library.yaml"
        lib.write_text("- name: Honesty\n  good: be honest\n")  # no 'bad' adjective
        words, named = [f"principles.library_file={lib}"], str(lib)
    elif case == "no_template":
        model = _no_template_model(toy_model_path, tmp_path / "model")
        words, named = [f"model.policy={model}"], "chat template"
    elif case == "missing_model":
        words, named = [f"model.policy={tmp_path / 'nowhere'}"], "model.policy"
    elif case == "missing_oracle":  # a method's own model directory is checked before Ray starts too
        words, named = ["algo=sepo", f"sepo.oracle_path={tmp_path / 'no-oracle'}"], "sepo.oracle_path="
    elif case == "bad_prompts":
        prompts.write_text('{"prompt": "ok"}\n{"prompt": \n')
        words, named = [f"data.prompts={prompts}"], f"{prompts}: line 2"
    elif case == "non_utf8":
        prompts.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
        words, named = [f"data.prompts={prompts}"], f"{prompts}: line 2 (row 1): not UTF-8"
    elif case == "too_few_prompts":
        words, named = [f"data.prompts={prompts}", "data.prompts_per_round=8"], "data.prompts_per_round=8"
    elif case == "output_under_a_file":
        (tmp_path / "afile").write_text("")
        out = tmp_path / "afile" / "run"
        words, named = [], str(out)
    else:
        role = case.split("_")[0]
        words, named = [f"{role}.device=cuda"], f"{role}.device=cuda"
    rc, err = _run(capsys, TINY, *words, f"output_dir={out}")
    assert rc == 2 and named in err and "Traceback" not in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_exits_2(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    rc, err = _run(capsys, TINY, f"output_dir={ro / 'run'}")
    assert rc == 2 and "not writable" in err


def _fake_run(run_dir: Path) -> dict:
    """A finished run's files (contents as a run writes them); returns path -> (bytes, mtime)."""
    (run_dir / "rounds" / "round_0001").mkdir(parents=True)
    (run_dir / "trainer_state" / "round_0001").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("rounds: 1\n")
    (run_dir / "state.json").write_text(json.dumps({"round": 1, "cursor": {"epoch": 0, "position": 8},
                                                    "trainer_tag": "round_0001"}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"round": 1, "train/loss": 0.5}) + "\n")
    (run_dir / "rounds" / "round_0001" / "triples.jsonl").write_text("{}\n")
    (run_dir / "trainer_state" / "round_0001" / "weights").write_text("w")
    return _snapshot(run_dir)


def _snapshot(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_run_directory_is_refused_without_resume_and_left_untouched(tmp_path, capsys):
    run_dir = tmp_path / "run"
    before = _fake_run(run_dir)
    rc, err = _run(capsys, TINY, f"output_dir={run_dir}")
    assert rc == 2 and "--resume" in err and "--overwrite" in err and "new output_dir" in err, err
    assert _snapshot(run_dir) == before


def test_resume_without_state_leaves_config_untouched(tmp_path, capsys):
    run_dir = tmp_path / "run"
    _fake_run(run_dir)
    (run_dir / "state.json").unlink()
    before = _snapshot(run_dir)
    rc, err = _run(capsys, "--resume", str(run_dir), "rounds=4")
    assert rc == 2 and "state.json not found" in err, err
    assert _snapshot(run_dir) == before


def test_overwrite_moves_the_old_run_aside(tmp_path):
    run_dir = tmp_path / "run"
    before = _fake_run(run_dir)
    assert preflight.claim_run_dir(run_dir, resume=False, overwrite=True) is None
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and not run_dir.exists()
    assert {k: v[0] for k, v in _snapshot(aside[0]).items()} == {k: v[0] for k, v in before.items()}


def test_relative_output_dir(tmp_path, monkeypatch):
    from selfsteer.config.schema import RunConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(preflight.OUTPUT_ROOT_ENV, raising=False)
    monkeypatch.delenv(preflight.RAY_JOB_ENV, raising=False)
    assert preflight.resolve_output_dir(RunConfig(output_dir="runs/a")).output_dir == str(tmp_path / "runs" / "a")
    monkeypatch.setenv(preflight.RAY_JOB_ENV, "{}")  # inside a Ray job: its cwd is a temporary copy
    with pytest.raises(preflight.InputError, match="output_dir=/absolute/path"):
        preflight.resolve_output_dir(RunConfig(output_dir="runs/a"))
    assert preflight.resolve_output_dir(RunConfig(output_dir="/data/runs/a")).output_dir == "/data/runs/a"
    monkeypatch.setenv(preflight.OUTPUT_ROOT_ENV, str(tmp_path / "root"))
    assert preflight.resolve_output_dir(RunConfig(output_dir="runs/a")).output_dir == str(tmp_path / "root" / "runs" / "a")

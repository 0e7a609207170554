"""`selfsteer pipeline` end to end: all five phases on 32 toy prompts on CPU, outputs checked against
the recipe's README examples, the final model trained from the original policy, and a rerun that
finds everything done."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from selfsteer.recipe.records import read_records

from .conftest import write_prompts
from .test_records import DPO_EXAMPLE, PRINCIPLES_EXAMPLE, SSO_EXAMPLE, shape

pytestmark = pytest.mark.slow


def _cli(*args, timeout=1800):
    return subprocess.run([sys.executable, "-m", "selfsteer.cli.recipe", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _distance(a: dict, b: dict) -> float:
    return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a if k in b) ** 0.5


def test_pipeline_runs_all_five_phases_on_32_prompts(tmp_path, toy_cache):
    prompts = write_prompts(tmp_path / "prompts.json", 32, seed=3)
    out = tmp_path / "recipe"
    args = ["pipeline", "--config", "configs/recipe_tiny_cpu.yaml", "--prompts", prompts, "--output-dir", out,
            f"model.cache_dir={toy_cache}", "data.prompts_per_round=32"]
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr[-4000:]

    uuids = [r["uuid"] for r in json.loads(prompts.read_text())]
    for name, example, kind, id_field in [("principles.json", PRINCIPLES_EXAMPLE, "principles", "uuid"),
                                          ("sso_data.json", SSO_EXAMPLE, "sso", "uuid"),
                                          ("dpo_data.json", DPO_EXAMPLE, "dpo", "prompt_id")]:
        text = (out / name).read_text(encoding="utf-8")
        records = json.loads(text)
        assert text == json.dumps(records, ensure_ascii=False, indent=2)  # the recipe's json.dump bytes
        assert all(shape(r) == shape(json.loads(example)[0]) for r in records), name  # fields, order, types
        assert [r[id_field] for r in records] == uuids, name  # every prompt, in input order
        assert len(read_records(out / name, kind).records) == 32  # and they read back as the next phase's input
        assert not (out / f"{name}.partial.jsonl").exists()
    for record in json.loads((out / "sso_data.json").read_text()):
        assert record["p_system"] != record["n_system"] and record["system"] == "" and record["history"] == []
        assert record["chosen"][0]["value"] == record["prompt"]

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["principles", "sso-data", "train-sso", "dpo-data", "train-dpo"]
    assert summary["principles"]["written"] == 32 and summary["principles"]["requests"] >= 32
    assert 0 <= summary["principles"]["fallbacks"] <= 32
    for key in ("train/loss", "train/loss/pos", "train/loss/neg", "train/loss/sft"):  # the v2 loss (docs/concepts/sso.md §5)
        assert key in summary["train-sso"], key
    assert "train/loss/base" not in summary["train-sso"]
    assert summary["train-sso"]["examples"] == 32 and summary["train-sso"]["optimizer_steps"] == 8  # 32 / (2 x 2)
    assert "train/rewards/margins" in summary["train-dpo"] and summary["train-dpo"]["examples"] == 32

    # Phase 5 trains the ORIGINAL policy: the final model is nearer the policy than the generator.
    from selfsteer.toy import build_toy_model

    policy = _weights(build_toy_model(toy_cache, max_position_embeddings=1024))
    generator, final = _weights(out / "generator"), _weights(out / "final")
    assert _distance(generator, policy) > 0 and _distance(final, policy) > 0
    assert _distance(final, policy) < _distance(final, generator)
    for model in ("generator", "final"):
        assert (out / model / "config.json").is_file() and (out / model / "train_log.jsonl").is_file()

    # A rerun finds every phase done: nothing is sampled or trained, and no file changes.
    before = {p.name: p.read_bytes() for p in out.glob("*.json") if p.name != "summary.json"}
    start = time.monotonic()
    again = _cli(*args)
    assert again.returncode == 0, again.stderr[-4000:]
    assert {p.name: p.read_bytes() for p in out.glob("*.json") if p.name != "summary.json"} == before
    rerun = json.loads((out / "summary.json").read_text())
    assert rerun["principles"]["already_done"] == 32 and rerun["dpo-data"]["already_done"] == 32
    assert rerun["train-sso"] == {"skipped_existing": 1.0} == rerun["train-dpo"]
    print(f"rerun took {time.monotonic() - start:.1f} s")

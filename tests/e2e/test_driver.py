"""End to end: `selfsteer run` on the embedded default (in-process Ray, toy model, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _run_cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "selfsteer.cli.main", "run", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_two_online_rounds_end_to_end(tmp_path, toy_cache):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    proc = _run_cli("configs/tiny_cpu.yaml", "rounds=2", f"output_dir={out}", f"model.cache_dir={toy_cache}")
    assert proc.returncode == 0, proc.stderr[-4000:]

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2]
    for m in lines:
        for key in ("train/loss", "train/loss/base", "train/loss/g", "train/w/mean", "train/rewards/margins",
                    "train/rewards/accuracies", "rollout/chosen_tokens", "principles/fallbacks",
                    "time/generation", "time/train", "time/sync", "sync/buckets"):
            assert key in m, key
        assert 0.5 <= m["train/w/mean"] < 1.0  # W = sigma(-(...)) with A <= 0 (docs/concepts/sso.md §3)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    seen_prompts = []
    for r in (1, 2):
        round_dir = out / "rounds" / f"round_{r:04d}"
        principles = [json.loads(x) for x in (round_dir / "principles.jsonl").read_text().splitlines()]
        triples = [json.loads(x) for x in (round_dir / "triples.jsonl").read_text().splitlines()]
        assert len(principles) == 8
        assert 0 < len(triples) <= 8
        for t in triples:
            assert set(t) >= {"instruction", "idx", "history", "p_system", "n_system", "system", "chosen", "rejected", "raw"}
            assert t["p_system"] != t["n_system"]
        seen_prompts += [p["uuid"] for p in principles]
        model = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / f"round_{r:04d}")
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert len(set(seen_prompts)) == 16  # the cursor moved on: no prompt repeated within the epoch
    state = json.loads((out / "state.json").read_text())
    assert state["round"] == 2 and state["cursor"]["position"] == 16


def test_bad_prompts_file_names_file_row_and_field(tmp_path, toy_cache):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "hello"}\n{"prompt": "  "}\n')
    proc = _run_cli("configs/tiny_cpu.yaml", f"data.prompts={bad}", f"output_dir={tmp_path / 'run'}",
                    f"model.cache_dir={toy_cache}", timeout=300)
    assert proc.returncode != 0
    assert str(bad) in proc.stderr and "row 1" in proc.stderr and "'prompt'" in proc.stderr


def test_bad_config_fails_before_any_actor(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("rounds: 2\ntrainer:\n  num_rank: 2\n")
    proc = _run_cli(str(cfg), timeout=120)
    assert proc.returncode == 2
    assert "trainer.num_rank" in proc.stderr and str(cfg) in proc.stderr
    proc = _run_cli(str(cfg).replace("bad", "missing"), timeout=120)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_engine_pool_grows_and_shrinks_during_a_run(ray_local, tmp_path, toy_cache):
    from selfsteer.config.schema import load_config
    from selfsteer.run.driver import request_scale, run

    out = tmp_path / "scale"
    cfg = load_config("configs/tiny_cpu.yaml", ["rounds=4", "rollout.num_engines=1", f"output_dir={out}",
                                                f"model.cache_dir={toy_cache}", "tensorboard=false"])

    def scale(round_index, roles):
        if round_index == 2:
            roles.resize_engines(2)  # Python API: applies now, the new engine is synced before sampling
        elif round_index == 3:
            request_scale(out, 1)  # file API (`selfsteer scale`): applied at the next round's start

    run(cfg, on_round_start=scale)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["rollout/engines"] for m in metrics] == [1, 2, 2, 1]
    assert (out / "control.applied").is_file()
    for r in (1, 2, 3, 4):
        round_dir = out / "rounds" / f"round_{r:04d}"
        n_principles = len((round_dir / "principles.jsonl").read_text().splitlines())
        n_triples = len((round_dir / "triples.jsonl").read_text().splitlines())
        dropped = json.loads((round_dir / "dropped.json").read_text()) if (round_dir / "dropped.json").exists() else {}
        assert n_principles == 8 and n_triples + sum(dropped.values()) == 8


def test_llm_principles_through_the_policy_engines(tmp_path, toy_cache):
    out = tmp_path / "llm"
    proc = _run_cli("configs/tiny_cpu.yaml", "rounds=1", "principles.mode=llm", f"output_dir={out}",
                    f"model.cache_dir={toy_cache}", "tensorboard=false")
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    # Two completion calls per prompt at least (bad, then good), retries and fallbacks counted.
    assert m["principles/requests"] >= 16
    assert m["principles/fallbacks"] <= 8 and "principles/parse_failures" in m
    rows = [json.loads(x) for x in (out / "rounds" / "round_0001" / "principles.jsonl").read_text().splitlines()]
    assert {r["source"] for r in rows} <= {"llm", "fallback"}
    assert len(rows) == 8

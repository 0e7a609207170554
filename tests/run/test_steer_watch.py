"""The in-run steerability warning: when it fires, what it names, and a run whose principles cannot steer."""

import json
import subprocess
import sys

import pytest
import yaml

from selfsteer.algorithms.diagnostics import dimension_gaps
from selfsteer.run.metrics import SteerWatch


def test_dimension_gaps_average_per_dimension_by_hand():
    gaps = dimension_gaps([("A",), ("B",), ("A", "B")], [-1.0, -2.0, -1.5], [-1.2, -2.0, -1.9])
    assert gaps == pytest.approx({"A": (0.2 + 0.4) / 2, "B": (0.0 + 0.4) / 2})


def test_warning_fires_after_the_first_round_and_when_the_gap_falls():
    watch = SteerWatch()
    m, text = watch.update(1, {"signal/steer_gap/Greeting": 0.4, "signal/steer_gap/Deaf": 0.01,
                               "signal/gap_chosen": 0.2})
    assert m["signal/steer_alert"] == 1.0 and m["signal/unsteered_dimensions"] == 1.0
    assert "Deaf (+0.010)" in text and "Greeting" not in text and "selfsteer probe" in text
    m, text = watch.update(2, {"signal/steer_gap/Greeting": 0.4, "signal/steer_gap/Deaf": 0.0,
                               "signal/gap_chosen": 0.2})
    assert text is None and m["signal/steer_alert"] == 0.0  # nothing new
    m, text = watch.update(3, {"signal/steer_gap/Greeting": 0.05, "signal/gap_chosen": 0.2})
    assert "Greeting (+0.050)" in text  # a dimension newly below the threshold
    m, text = watch.update(4, {"signal/gap_chosen": 0.02})
    assert "signal/gap_chosen is +0.020" in text  # the policy's own gap crossed below
    assert watch.update(5, {"signal/gap_chosen": 0.01})[1] is None  # still below: said already


def test_no_warning_when_every_dimension_steers():
    m, text = SteerWatch().update(1, {"signal/steer_gap/A": 0.3, "signal/steer_gap/B": 0.11, "signal/gap_chosen": 0.2})
    assert text is None and m["signal/unsteered_dimensions"] == 0.0 and m["signal/steer_gap_min"] == 0.11


@pytest.mark.slow
def test_a_run_whose_principles_cannot_steer_warns_after_round_1(tmp_path, toy_cache):
    same = "answer with a short list ."  # good = bad: the contexts are identical, the gap is exactly 0
    library = tmp_path / "deaf.yaml"
    library.write_text(yaml.safe_dump([{"name": "Deaf", "good": same, "bad": same, "good_adjective": "good",
                                        "bad_adjective": "good"}]))
    out = tmp_path / "run"
    import importlib.util

    topic = importlib.util.find_spec("sentence_transformers") is not None  # the on-topic watch rides along
    proc = subprocess.run(
        [sys.executable, "-m", "selfsteer.cli.main", "run", "configs/tiny_cpu.yaml", "rounds=1", f"output_dir={out}",
         f"model.cache_dir={toy_cache}", "trainer.backend=torch", "trainer.num_ranks=1", "rollout.num_engines=1",
         "data.prompts_per_round=2", f"principles.library_file={library}", "principles.num_dimensions=1",
         "principles.concision_prob=0", "tensorboard=false", f"signal.on_topic={str(topic).lower()}"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["signal/steer_alert"] == 1.0 and abs(row["signal/steer_gap/Deaf"]) < 1e-4
    assert "the principles do not steer the policy" in proc.stderr and "Deaf (" in proc.stderr
    if topic:  # scored from the round's triples by the driver (values are noise on the toy task's tokens)
        shares = [row[f"signal/on_topic_{s}"] for s in ("chosen", "rejected", "raw")]
        assert all(0.0 <= v <= 1.0 for v in shares) and row["signal/on_topic_raw"] >= 0.5
        assert row["signal/derails"] == float(round(shares[2] - shares[0], 9) >= 0.2)


def test_principles_placement_puts_the_principle_in_the_system_prompt_after_or_before_the_question():
    from selfsteer.config.schema import ConfigError, load_config
    from selfsteer.data.prompts import PromptRecord
    from selfsteer.online.sso import _requests

    pair = {"good_system": "Greet the user.", "bad_system": "Do not greet."}
    prompt = [PromptRecord("u0", 0, "Where do owls live?")]
    system = _requests(load_config(None, []), prompt, [pair])
    assert [(r.prompt, r.system) for r in system[:2]] == [("Where do owls live?", "Greet the user."),
                                                          ("Where do owls live?", "Do not greet.")]
    user = _requests(load_config(None, ["principles.placement=user"]), prompt, [pair])
    assert [(r.prompt, r.system) for r in user] == [("Where do owls live?\n\nGreet the user.", None),
                                                    ("Where do owls live?\n\nDo not greet.", None),
                                                    ("Where do owls live?", None)]
    before = _requests(load_config(None, ["principles.placement=user_before"]), prompt, [pair])
    assert [(r.prompt, r.system) for r in before] == [("Greet the user.\n\nWhere do owls live?", None),
                                                      ("Do not greet.\n\nWhere do owls live?", None),
                                                      ("Where do owls live?", None)]
    with pytest.raises(ConfigError, match="placement"):
        load_config(None, ["principles.placement=assistant"])

"""`selfsteer probe`: log-prob gaps against hand-worked values, verdicts, and a dimension that cannot steer."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from selfsteer.cli.main import main
from selfsteer.config.schema import load_config
from selfsteer.tools.probe import mean_logps, run_probe, summarize


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def test_mean_logps_of_a_zeroed_model_are_minus_log_vocab(toy_model_path):
    model = _model(toy_model_path)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every logit 0: each token has probability 1/V
    vocab = model.config.vocab_size
    got = mean_logps(model, [[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14]], pad_id=0)
    assert got == pytest.approx([-math.log(vocab)] * 2, abs=1e-5)


def test_mean_logps_match_a_plain_per_token_loop(toy_model_path):
    model = _model(toy_model_path)
    contexts, responses = [[5, 6, 7, 8], [9, 10]], [[11, 12], [13, 14, 15]]
    got = mean_logps(model, contexts, responses, pad_id=0, batch_size=1)
    for ctx, resp, value in zip(contexts, responses, got):
        ids = torch.tensor([ctx + resp])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        expected = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(resp)) / len(resp)
        assert value == pytest.approx(expected, abs=1e-5)


def test_summarize_works_the_numbers_by_hand():
    a = {"chosen_pos": [-1.0, -2.0, -1.5], "chosen_neg": [-1.2, -2.1, -1.9],  # y+ gaps .2 .1 .4
         "rejected_neg": [-1.0, -1.0, -1.0], "rejected_pos": [-1.4, -1.1, -1.0]}  # y- gaps .4 .1 0
    texts = {"none": ["a", "b", "c"], "good": ["x", "y", "z"], "bad": ["x", "q", "r"]}
    row = summarize("Dim", None, a, texts, None)
    assert row["gap_chosen"] == pytest.approx(0.7 / 3)
    assert row["gap_rejected"] == pytest.approx(0.5 / 3)
    assert row["gap"] == pytest.approx(0.2)  # per prompt (.3, .1, .2)
    assert row["gap_sd"] == pytest.approx(0.1)
    assert row["identical"] == pytest.approx(1 / 3)
    assert row["verdict"] == "steers"  # no check: gap 0.2 >= 0.10
    passed = {"none": [False] * 3, "good": [True, True, False], "bad": [True, True, False]}
    row = summarize("Dim", "short", a, texts, passed)
    assert row["compliance_good"] == pytest.approx(2 / 3) and row["compliance_delta"] == 0.0
    assert row["verdict"] == "not at all"  # the check decides: good and bad behave alike
    passed["bad"] = [True, False, False]
    assert summarize("Dim", "short", a, texts, passed)["verdict"] == "steers"  # +0.33


def test_a_principle_that_takes_answers_off_the_question_derails():
    from selfsteer.algorithms.diagnostics import on_topic_threshold
    from selfsteer.tools.probe import summarize

    # nearest-rank 5th percentile of 20 cosines: the 1st smallest; of 40: the 2nd smallest
    assert on_topic_threshold([0.1 * i for i in range(20, 0, -1)]) == 0.1
    assert abs(on_topic_threshold([0.01 * i for i in range(1, 41)]) - 0.02) < 1e-12
    a = {"chosen_pos": [-1.0] * 4, "chosen_neg": [-1.5] * 4, "rejected_neg": [-1.0] * 4, "rejected_pos": [-1.5] * 4}
    texts = {k: ["x"] * 4 for k in ("none", "good", "bad")}
    passed = {"none": [False] * 4, "good": [True] * 4, "bad": [False] * 4}  # compliance +1.00: steers ...
    on_topic = {"none": [True] * 4, "good": [True, False, False, True], "bad": [True] * 4}
    row = summarize("Dim", "greeting", a, texts, passed, on_topic)
    assert (row["on_topic_none"], row["on_topic_good"], row["on_topic_bad"]) == (1.0, 0.5, 1.0)
    assert row["verdict"] == "derails"  # ... but half its answers left the question (drop 0.5 >= 0.2)
    on_topic["good"] = [True, True, True, False]  # a drop of 0.25
    assert summarize("Dim", "greeting", a, texts, passed, on_topic)["verdict"] == "derails"
    on_topic["none"] = [True, True, True, False]  # no drop
    assert summarize("Dim", "greeting", a, texts, passed, on_topic)["verdict"] == "steers"
    assert "on_topic_good" not in summarize("Dim", "greeting", a, texts, passed)  # no encoder: not measured


@pytest.fixture()
def probe_config(toy_model_path, tmp_path):
    from selfsteer.toy.prompts import write_toy_prompts

    prompts = write_toy_prompts(tmp_path / "prompts.jsonl", n=6)
    library = tmp_path / "library.yaml"
    same = "answer with a short list ."
    library.write_text(yaml.safe_dump([
        {"name": "Deaf", "good": same, "bad": same, "good_adjective": "good", "bad_adjective": "good",
         "check": "no_exclamation"},
        {"name": "Tone", "good": "be warm and kind .", "bad": "be cold and rude ."},
    ]))
    overrides = [f"model.policy={toy_model_path}", f"data.prompts={prompts}", f"principles.library_file={library}",
                 "rollout.sampling.max_new_tokens=8"]
    return tmp_path, overrides


def test_a_dimension_that_cannot_steer_is_reported_as_such(probe_config):
    tmp_path, overrides = probe_config
    cfg = load_config(None, overrides + ["rollout.sampling.temperature=0"])
    report = run_probe(cfg, n_prompts=4, out_dir=tmp_path / "out", dimensions=["deaf"])
    (row,) = report["dimensions"]
    assert row["dimension"] == "Deaf" and row["prompts"] == 4
    assert abs(row["gap"]) < 1e-5 and row["identical"] == 1.0  # identical principles: identical contexts
    assert row["compliance_delta"] == 0.0 and row["verdict"] == "not at all"
    # identical contexts at T=0: the good principle's answers stay exactly as on topic as the bad one's
    assert row["on_topic_good"] == row["on_topic_bad"] and 0.0 <= row["on_topic_none"] <= 1.0
    assert -1.0 <= report["settings"]["on_topic_cosine"] <= 1.0
    assert "| Deaf | no_exclamation |" in (tmp_path / "out" / "probe.md").read_text()
    assert (tmp_path / "out" / "probe.png").stat().st_size > 0


def test_cli_probes_in_parts_and_refuses_an_unknown_dimension(probe_config, capsys):
    tmp_path, overrides = probe_config
    out = tmp_path / "cli"
    assert main(["probe", "configs/tiny_cpu.yaml", *overrides, "--prompts", "3", "--out", str(out),
                 "--dimensions", "Tone"]) == 0
    assert main(["probe", "configs/tiny_cpu.yaml", *overrides, "--prompts", "3", "--out", str(out),
                 "--dimensions", "Deaf"]) == 0
    report = json.loads((out / "probe.json").read_text())
    assert [r["dimension"] for r in report["dimensions"]] == ["Tone", "Deaf"]  # the second part merged in
    capsys.readouterr()
    assert main(["probe", "configs/tiny_cpu.yaml", *overrides, "--dimensions", "Nope"]) == 2
    assert "unknown dimension(s) ['Nope']" in capsys.readouterr().err


def test_a_probe_with_other_settings_keeps_the_earlier_report(probe_config):
    tmp_path, overrides = probe_config
    out = tmp_path / "cli"
    assert main(["probe", "configs/tiny_cpu.yaml", *overrides, "--prompts", "3", "--out", str(out),
                 "--dimensions", "Tone"]) == 0
    first = json.loads((out / "probe.json").read_text())
    assert main(["probe", "configs/tiny_cpu.yaml", *overrides, "--prompts", "2", "--out", str(out),
                 "--dimensions", "Deaf"]) == 0
    (kept,) = out.glob("probe.2*.json")  # moved aside, whole
    assert json.loads(kept.read_text()) == first
    assert [r["dimension"] for r in json.loads((out / "probe.json").read_text())["dimensions"]] == ["Deaf"]


def test_verdicts_at_their_thresholds_exactly():
    """Differences of shares land a float step off (0.7 - 0.5 = 0.19999999999999996): the thresholds hold."""
    from selfsteer.algorithms.diagnostics import derails, steer_verdict

    assert 0.7 - 0.5 < 0.2 and steer_verdict(0.0, 0.7 - 0.5) == "steers"
    assert 0.3 - 0.2 < 0.1 and steer_verdict(0.0, 0.3 - 0.2) == "barely" and steer_verdict(0.0, 0.09) == "not at all"
    assert derails(1.0, 0.8) and not derails(1.0, 0.81)

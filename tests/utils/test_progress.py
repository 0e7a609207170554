"""Long phases inside actors print a periodic progress line; short ones stay silent."""

from __future__ import annotations

import torch

from selfsteer.utils.progress import ProgressLine


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_line_every_interval_and_a_final_line_only_for_long_phases():
    clock, lines = Clock(), []
    bar = ProgressLine("reference scoring", 40, "rows", interval_s=10, emit=lines.append, clock=clock)
    for _ in range(4):
        clock.t += 6
        bar.update(10)
    bar.close()
    # Updates at 6, 12 (line), 18, 24 (line: 12 s after the last); final at 24.
    assert lines == ["reference scoring: 20/40 rows in 12 s (1.67/s, ~12 s left)",
                     "reference scoring: 40/40 rows in 24 s (1.67/s) done"]
    quiet = []
    short = ProgressLine("training", 2, "optimizer steps", interval_s=10, emit=quiet.append, clock=clock)
    short.update(2)
    short.close()
    assert quiet == []
    unknown_total = ProgressLine("principles", None, "requests", interval_s=0, emit=quiet.append, clock=clock)
    unknown_total.update(3)
    assert quiet == ["principles: 3 requests in 0 s (0.00/s)"]


def test_score_sequences_reports_every_row(toy_model_path):
    from transformers import AutoModelForCausalLM

    from selfsteer.algorithms.logprobs import score_sequences

    model = AutoModelForCausalLM.from_pretrained(toy_model_path).eval()
    seen = []
    contexts = [[5, 6, 7]] * 5
    responses = [[8, 9], [10], [11, 12, 13], [14], [15, 16]]
    with torch.no_grad():
        score_sequences(model, contexts, responses, pad_id=0, device="cpu", micro_batch_size=2, progress=seen.append)
    assert seen == [2, 2, 1]

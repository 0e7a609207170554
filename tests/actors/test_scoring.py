"""The one scoring-model loader: its probes, its pad id, and that every user scores as before."""

from __future__ import annotations

import pytest
import torch

from selfsteer.actors.scoring import ScoringModel, pad_token_id
from selfsteer.algorithms.logprobs import score_sequences
from selfsteer.config.schema import ModelConfig, ReferenceConfig

ROWS = ([[1, 5, 6], [1, 5, 6], [1, 7]], [[8, 9, 2], [10, 2], [11, 12, 13, 2]])


def _plain(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def test_pad_id_falls_back_to_eos():
    class Tok:
        pad_token_id, eos_token_id = None, 7

    assert pad_token_id(Tok()) == 7
    Tok.pad_token_id = 0
    assert pad_token_id(Tok()) == 0


def test_loader_probes_and_scores_as_the_plain_padded_path(toy_model_path):
    scorer = ScoringModel.load(str(toy_model_path), ModelConfig(), device="cpu", micro_batch_size=2)
    assert scorer.packed and scorer.split_head and not scorer.varlen  # fp32 CPU toy: both probes pass
    assert not any(p.requires_grad for p in scorer.model.parameters())
    with torch.no_grad():
        want, counts = score_sequences(_plain(toy_model_path), *ROWS, pad_id=scorer.pad_id, device="cpu")
    got, got_counts = scorer.score(*ROWS)
    assert got == pytest.approx(want.tolist(), abs=1e-4) and got_counts == counts.tolist() == [3, 2, 4]
    off = ScoringModel.load(str(toy_model_path), ModelConfig(), device="cpu", micro_batch_size=2, packing=False,
                            split_head=False)
    assert not off.packed and not off.split_head
    assert off.score(*ROWS)[0] == want.tolist()  # the same padded forward, bit for bit


def test_reference_and_sipo_scorer_score_through_it(toy_model_path):
    from selfsteer.actors.reference import ReferenceModel
    from selfsteer.online.sipo_models import SipoScorer

    ref = ReferenceModel(str(toy_model_path), ReferenceConfig(device="cpu", micro_batch_size=2), ModelConfig())
    assert ref.packed == ref.scorer.packed and ref.model is ref.scorer.model
    with torch.no_grad():
        want = score_sequences(_plain(toy_model_path), *ROWS, pad_id=ref.scorer.pad_id, device="cpu")[0].tolist()
    assert ref.score(*ROWS)[0] == pytest.approx(want, abs=1e-4)
    path = str(toy_model_path)
    sipo = SipoScorer(path, path, path, [0.5], ReferenceConfig(device="cpu"), ModelConfig())
    scores = sipo.score(*ROWS)
    assert list(scores) == ["sft", "A0", "B0", "soup_0.5"] and sipo.names() == ["A0", "B0", "soup_0.5"]
    assert all(v == want for v in scores.values())  # padded, full logits: the values SIPO always had

"""Batched log-probs equal the one-sequence-at-a-time computation: padded rows and packed rows."""

from __future__ import annotations

import random

import pytest
import torch

from selfsteer.algorithms.logprobs import pack_rows, score_sequences


@pytest.fixture(scope="module")
def model_and_rows(toy_model_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(toy_model_path, dtype=torch.float32)
    rng = random.Random(0)
    vocab = model.config.vocab_size

    def ids(lo, hi):
        return [rng.randrange(4, vocab) for _ in range(rng.randint(lo, hi))]

    contexts = [ids(3, 40) for _ in range(11)]
    responses = [ids(1, 30) for _ in range(11)]
    return model, contexts, responses


def _one_by_one(model, contexts, responses):
    sums = []
    for c, r in zip(contexts, responses):
        s, _ = score_sequences(model, [c], [r], pad_id=0, device="cpu", micro_batch_size=1)
        sums.append(s)
    return torch.cat(sums)


@pytest.mark.parametrize("packed", [False, True])
def test_batched_equals_unbatched(model_and_rows, packed):
    model, contexts, responses = model_and_rows
    model.eval()
    with torch.no_grad():
        expected = _one_by_one(model, contexts, responses)
        got, counts = score_sequences(model, contexts, responses, pad_id=0, device="cpu",
                                      micro_batch_size=len(contexts), packed=packed)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert counts.tolist() == [float(len(r)) for r in responses]


def test_packed_gradients_equal_unbatched(model_and_rows):
    model, contexts, responses = model_and_rows
    model.train()  # the toy model has no dropout: train mode is deterministic
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.linspace(-1, 1, len(contexts))  # a loss that weighs each sequence differently

    def grads(fn):
        model.zero_grad(set_to_none=True)
        (fn() * weights).sum().backward()
        return [p.grad.clone() for p in params]

    expected = grads(lambda: _one_by_one(model, contexts, responses))
    got = grads(lambda: score_sequences(model, contexts, responses, pad_id=0, device="cpu",
                                        micro_batch_size=len(contexts), packed=True)[0])
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_pack_rows_fills_rows_up_to_the_longest_sequence():
    contexts = [[5] * 10, [6] * 3, [7] * 4, [8] * 2]
    responses = [[9] * 6, [9] * 5, [9] * 4, [9] * 3]  # lengths 16, 8, 8, 5
    ids, pos, labels, owner = pack_rows(contexts, responses, pad_id=0)
    assert ids.shape == (3, 16)  # [16], [8 + 8], [5 + pad]: 3 rows for 4 sequences
    assert pos[1].tolist() == list(range(8)) * 2  # positions restart per sequence
    for i, r in enumerate(responses):
        assert (owner == i).sum() == len(r)  # every response token scored once, for its own sequence
        assert labels[owner == i].tolist() == r
    assert (labels[owner < 0] == -100).all()


def test_pack_rows_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="2 contexts but 1 responses"):
        pack_rows([[1], [2]], [[3]], pad_id=0)


def test_packing_check_accepts_an_hf_decoder_and_rejects_a_leaking_one(model_and_rows):
    from selfsteer.algorithms.logprobs import packing_supported

    model = model_and_rows[0].eval()
    kwargs = dict(pad_id=0, device="cpu", vocab_size=model.config.vocab_size)
    assert packing_supported(model, **kwargs)

    def leaking(**batch):  # an all-ones mask turns the block-diagonal mask off: rows attend across sequences
        batch.setdefault("attention_mask", torch.ones_like(batch["input_ids"]))
        return model(**batch)

    assert not packing_supported(leaking, **kwargs)

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

    distinct = [ids(3, 40) for _ in range(6)]
    contexts = [distinct[i % 6] for i in range(11)]  # 5 contexts carry two responses (as DPO's x does)
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


def test_pack_rows_shares_contexts_and_fills_rows():
    contexts = [[5] * 10, [6] * 3, [7] * 4, [6] * 3]  # rows 1 and 3 share a context
    responses = [[9] * 6, [8] * 2, [9] * 4, [7] * 3]  # units: 16, 3 + 2 + 3 = 8, 8
    p = pack_rows(contexts, responses, pad_id=0)
    assert p.input_ids.shape == (2, 16)  # [16], [8 + 8]: 2 rows for 4 sequences, context 6 stored once
    assert (p.input_ids == 6).sum() == 3
    for i, r in enumerate(responses):
        assert p.target[p.owner == i].tolist() == r  # every response token scored once, for its own sequence
    # Sibling responses under one context never see each other; both see the context.
    row = p.input_ids[1].tolist()
    first, second = row.index(8), row.index(7)
    allowed = p.allowed[1, 0]
    assert allowed[second, row.index(6)] and not allowed[second, first]
    assert p.position_ids[1, first].item() == p.position_ids[1, second].item() == 3  # both continue the context


def test_pack_rows_rejects_bad_rows():
    with pytest.raises(ValueError, match="row 1: empty context"):
        pack_rows([[1], []], [[3], [4]], pad_id=0)


def test_pack_rows_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="2 contexts but 1 responses"):
        pack_rows([[1], [2]], [[3]], pad_id=0)


def test_packing_check_accepts_an_hf_decoder_and_rejects_a_leaking_one(model_and_rows):
    from selfsteer.algorithms.logprobs import packing_supported

    model = model_and_rows[0].eval()
    kwargs = dict(pad_id=0, device="cpu", vocab_size=model.config.vocab_size)
    assert packing_supported(model, **kwargs)

    def leaking(**batch):  # ignores the packed 4D mask: plain causal attention across the whole row
        if batch["attention_mask"].dim() == 4:
            batch["attention_mask"] = None
        return model(**batch)

    assert not packing_supported(leaking, **kwargs)


def test_packed_micro_batches_group_rows_by_context_and_keep_the_caller_order(model_and_rows):
    model, contexts, responses = model_and_rows
    model.eval()
    with torch.no_grad():
        expected = _one_by_one(model, contexts, responses)
        got, counts = score_sequences(model, contexts, responses, pad_id=0, device="cpu", micro_batch_size=4,
                                      packed=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert counts.tolist() == [float(len(r)) for r in responses]

"""Chunked log-probs equal the unchunked float32 log-softmax: values and gradients, logits or lm_head per chunk."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from selfsteer.algorithms.logprobs import gathered_logps, score_sequences, split_head_supported, token_logprobs


def _scored(dtype, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    source = torch.randn(3, 9, 50, generator=gen, dtype=dtype) * 4
    row = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 1])
    pos = torch.tensor([1, 2, 3, 0, 8, 4, 5, 6, 7, 8, 8])  # (1, 8) twice: a shared context end
    target = torch.randint(0, 50, (11,), generator=gen)
    return source.requires_grad_(requires_grad), row, pos, target


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk", [1, 4, 11, 64])  # 4 leaves a short last chunk; 64 exceeds the 11 tokens
def test_chunked_equals_unchunked_and_hand_computed(dtype, tol, chunk):
    source, row, pos, target = _scored(dtype)
    got = gathered_logps(source, row, pos, target, chunk_size=chunk)
    unchunked = gathered_logps(source, row, pos, target, chunk_size=0)
    by_hand = torch.log_softmax(source.double(), -1)[row, pos, target]
    assert got.dtype == unchunked.dtype == torch.promote_types(dtype, torch.float32) and got.shape == (11,)
    torch.testing.assert_close(got, unchunked, rtol=tol, atol=tol)
    torch.testing.assert_close(got.double(), by_hand, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk", [3, 11])
def test_chunked_gradients_equal_unchunked(dtype, tol, chunk):
    weights = torch.linspace(-1, 2, 11)

    def grad(chunk_size):
        source, row, pos, target = _scored(dtype, requires_grad=True)
        (gathered_logps(source, row, pos, target, chunk_size=chunk_size) * weights).sum().backward()
        return source.grad

    torch.testing.assert_close(grad(chunk), grad(0), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_head_applied_per_chunk_equals_full_logits_with_grads(dtype, tol):
    weights = torch.linspace(-1, 2, 11)

    def run(chunk_size):
        torch.manual_seed(1)
        head = torch.nn.Linear(6, 50, bias=False, dtype=dtype)
        hidden, row, pos, target = _scored(dtype, requires_grad=True)
        hidden = hidden[..., :6].detach().requires_grad_(True)
        logps = gathered_logps(hidden, row, pos, target, head=head, chunk_size=chunk_size)
        (logps * weights).sum().backward()
        return logps.detach(), hidden.grad, head.weight.grad

    for got, want in zip(run(4), run(0)):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_no_grad_keeps_no_graph_and_bad_chunk_is_rejected():
    source, row, pos, target = _scored(torch.float32, requires_grad=True)
    with torch.no_grad():
        assert not gathered_logps(source, row, pos, target, chunk_size=4).requires_grad
    with pytest.raises(ValueError, match="chunk_size must be >= 0, got -1"):
        gathered_logps(source, row, pos, target, chunk_size=-1)


@pytest.fixture(scope="module")
def toy(toy_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(toy_model_path, dtype=torch.float32)
    rng = random.Random(3)
    vocab = model.config.vocab_size
    distinct = [[rng.randrange(4, vocab) for _ in range(rng.randint(3, 20))] for _ in range(4)]
    contexts = [distinct[i % 4] for i in range(7)]
    responses = [[rng.randrange(4, vocab) for _ in range(rng.randint(1, 15))] for _ in range(7)]
    return model, contexts, responses


@pytest.mark.parametrize("packed", [False, True])
def test_model_split_head_chunked_equals_full_logits_unchunked(toy, packed):
    model, contexts, responses = toy
    model.train()  # no dropout in the toy model: deterministic, and the chunks must backprop
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.linspace(-1, 1, len(contexts))

    def run(**kw):
        model.zero_grad(set_to_none=True)
        sums, counts = score_sequences(model, contexts, responses, pad_id=0, device="cpu", micro_batch_size=7,
                                       packed=packed, **kw)
        (sums * weights).sum().backward()
        return sums.detach(), counts, [p.grad.clone() for p in params]

    want = run(chunk_size=0)
    for kw in (dict(chunk_size=5), dict(chunk_size=5, split_head=True), dict(chunk_size=0, split_head=True)):
        got = run(**kw)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-4)
        assert got[1].tolist() == want[1].tolist() == [float(len(r)) for r in responses]
        for g, w in zip(got[2], want[2]):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_token_logprobs_split_head_chunked_equals_full_logits(toy):
    model, contexts, responses = toy
    kw = dict(pad_id=0, device="cpu", micro_batch_size=4)
    got = token_logprobs(model.eval(), contexts, responses, split_head=True, chunk_size=3, **kw)
    want = token_logprobs(model, contexts, responses, chunk_size=0, **kw)
    assert [len(g) for g in got] == [len(r) for r in responses]
    torch.testing.assert_close(torch.tensor(sum(got, [])), torch.tensor(sum(want, [])), rtol=1e-5, atol=1e-5)


def test_split_head_check_rejects_a_model_that_rescales_its_logits(toy):
    model = toy[0].eval()
    kw = dict(pad_id=0, device="cpu", vocab_size=model.config.vocab_size)
    assert split_head_supported(model, **kw)

    class Scaled(torch.nn.Module):  # logits scaled after the lm_head, as Granite and Cohere do
        def __init__(self):
            super().__init__()
            self.inner = model

        def get_decoder(self):
            return model.get_decoder()

        def get_output_embeddings(self):
            return model.get_output_embeddings()

        def forward(self, **batch):
            return SimpleNamespace(logits=model(**batch).logits * 0.5)

    assert not split_head_supported(Scaled(), **kw)
    assert not split_head_supported(lambda **batch: model(**batch), **kw)  # a bare callable: no submodules


def test_pack_varlen_puts_every_sequence_in_one_row_with_restarting_positions():
    from selfsteer.algorithms.logprobs import pack_varlen

    p = pack_varlen([[5, 6], [5, 6], [7]], [[8, 9], [10], [11, 12]])
    assert p.input_ids.tolist() == [[5, 6, 8, 9, 5, 6, 10, 7, 11, 12]]  # the shared context is repeated
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]]
    assert p.pos.tolist() == [1, 2, 5, 7, 8] and p.target.tolist() == [8, 9, 10, 11, 12]
    assert p.owner.tolist() == [0, 0, 1, 2, 2] and p.row.tolist() == [0] * 5
    assert "attention_mask" not in p.model_inputs(torch.float32)
    with pytest.raises(ValueError, match="row 1: empty context"):
        pack_varlen([[1], []], [[2], [3]])


def test_varlen_rows_score_as_padded_rows_under_sdpa(toy):
    """On CPU the varlen layout runs through SDPA's block-diagonal mask (the flash kernel: tests/gpu)."""
    from selfsteer.algorithms.logprobs import packing_supported

    model, contexts, responses = toy
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.linspace(-1, 1, len(contexts))

    def run(**kw):
        model.zero_grad(set_to_none=True)
        sums, _ = score_sequences(model, contexts, responses, pad_id=0, device="cpu", micro_batch_size=7, **kw)
        (sums * weights).sum().backward()
        return [sums.detach()] + [p.grad.clone() for p in params]

    for got, want in zip(run(packed=True, varlen=True, split_head=True), run()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert packing_supported(model.eval(), pad_id=0, device="cpu", vocab_size=model.config.vocab_size, varlen=True)

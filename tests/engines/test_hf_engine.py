"""HFBackend on the toy model: padding-invariant greedy, chunked request order, stops, weights, the
backend registry. The contract every backend keeps: tests/engines/test_engine_contract.py."""

from __future__ import annotations

import pytest
import torch

from selfsteer.engines.base import Sampling
from tests.helpers import assert_request_order, assert_stop_string_cuts, stop_word

GREEDY = Sampling(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The toy model gains nothing from intra-op threads, and on a shared 2-core box they oversubscribe.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine(hf_sharp_path):
    from selfsteer.engines.hf_engine import HFBackend

    return HFBackend(str(hf_sharp_path), device="cpu")


def test_greedy_outputs_differ_per_prompt(engine, prompt_ids):
    # Guards the fixture: the padding tests below mean something only if outputs depend on the prompt.
    outs = engine.generate(prompt_ids, [GREEDY] * len(prompt_ids))
    assert len({tuple(o.token_ids) for o in outs}) == len(prompt_ids)


def test_left_padding_does_not_change_greedy_results(engine, prompt_ids):
    batch = engine.generate(prompt_ids, [GREEDY] * len(prompt_ids))
    for ids, out in zip(prompt_ids, batch):
        alone = engine.generate([ids], [GREEDY])[0]
        assert out.token_ids == alone.token_ids
        assert out.text == alone.text and out.finish_reason == alone.finish_reason
        assert out.prompt_ids == ids


def test_results_in_request_order_across_sampling_groups_and_chunks(hf_sharp_path, prompt_ids):
    from selfsteer.engines.hf_engine import HFBackend

    # Interleaved settings are batched per setting, and chunked by max_batch_size; order must survive.
    engine = HFBackend(str(hf_sharp_path), max_batch_size=2)
    assert_request_order(engine, prompt_ids, GREEDY)


def test_greedy_equals_model_generate(engine, hf_sharp_path, prompt_ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_sharp_path).eval()
    outs = engine.generate(prompt_ids, [GREEDY] * len(prompt_ids))
    for ids, out in zip(prompt_ids, outs):
        ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=GREEDY.max_new_tokens, pad_token_id=0)
        expected = ref[0, len(ids):].tolist()
        assert out.token_ids == expected
        assert out.text == engine.tokenizer.decode(expected, skip_special_tokens=True)


def test_stop_string_cuts_text(engine, prompt_ids):
    _, stopped, word, other = assert_stop_string_cuts(engine, prompt_ids, GREEDY)
    # The other row of the batch is unaffected unless it contains the stop word itself.
    if word not in other.text:
        assert stopped[1].text == other.text and stopped[1].finish_reason == other.finish_reason


def test_stop_string_token_ids_are_a_prefix_of_the_full_generation(engine, prompt_ids):
    full = engine.generate([prompt_ids[0]], [GREEDY])[0]
    word, _ = stop_word(full.text)
    # Batched with a row that runs on, so HF keeps stepping after row 0 stopped.
    stopped = engine.generate([prompt_ids[0], prompt_ids[2]],
                              [Sampling(temperature=0.0, max_new_tokens=12, stop=(word,))] * 2)[0]
    assert stopped.token_ids == full.token_ids[:len(stopped.token_ids)]
    assert len(stopped.token_ids) < len(full.token_ids)


def test_load_weights_changes_outputs_and_rejects_unknown_names(hf_sharp_path, prompt_ids):
    from selfsteer.engines.hf_engine import HFBackend

    engine = HFBackend(str(hf_sharp_path))  # private copy: this test changes weights
    before = [o.token_ids for o in engine.generate(prompt_ids, [GREEDY] * len(prompt_ids))]
    original = {n: p.detach().clone() for n, p in engine.named_parameters()}

    new_head = torch.randn(original["lm_head.weight"].shape, generator=torch.Generator().manual_seed(1))
    engine.load_weights([("lm_head.weight", new_head.to(torch.float64))])  # cast to the param's dtype
    params = dict(engine.named_parameters())
    assert params["lm_head.weight"].dtype == torch.float32
    assert torch.equal(params["lm_head.weight"], new_head)
    assert torch.equal(params["model.norm.weight"], original["model.norm.weight"])  # others untouched
    after = [o.token_ids for o in engine.generate(prompt_ids, [GREEDY] * len(prompt_ids))]
    assert after != before

    engine.load_weights(original.items())
    assert [o.token_ids for o in engine.generate(prompt_ids, [GREEDY] * len(prompt_ids))] == before

    with pytest.raises(KeyError, match="model.layers.9.mlp.up_proj.weight"):
        engine.load_weights([("model.layers.9.mlp.up_proj.weight", torch.zeros(1))])


@pytest.mark.parametrize("tied", [False, True])
def test_bucket_flats_hold_the_parameters_without_changing_outputs(hf_sharp_path, hf_toy_path, prompt_ids, tied):
    from selfsteer.sync.buckets import pack_bucket, plan_buckets, unpack_bucket
    from selfsteer.engines.hf_engine import HFBackend

    engine = HFBackend(str(hf_toy_path if tied else hf_sharp_path))  # private copy: parameters move
    before = [o.token_ids for o in engine.generate(prompt_ids, [GREEDY] * len(prompt_ids))]
    original = {n: p.detach().clone() for n, p in engine.named_parameters()}
    buckets = plan_buckets([(n, tuple(p.shape), p.dtype) for n, p in original.items()], 20 * 1024)
    flats = engine.bucket_flats(buckets)
    assert len(flats) == len(buckets) > 2 and engine.bucket_flats(buckets) is flats  # homed once
    for bucket, flat in zip(buckets, flats):
        assert torch.equal(flat, pack_bucket(bucket, original, "cpu"))
    params = dict(engine.named_parameters())
    start = {id(f): f.data_ptr() for f in flats}
    assert all(any(start[id(f)] <= p.data_ptr() < start[id(f)] + f.numel() * 4 for f in flats) for p in params.values())
    assert (engine.model.lm_head.weight is engine.model.model.embed_tokens.weight) == tied
    assert [o.token_ids for o in engine.generate(prompt_ids, [GREEDY] * len(prompt_ids))] == before
    # Writing a bucket tensor is writing the weights (what a sync's broadcast does).
    redrawn = {n: torch.randn_like(t) for n, t in original.items()}
    for bucket, flat in zip(buckets, flats):
        flat.copy_(pack_bucket(bucket, redrawn, "cpu"))
    assert all(torch.equal(p, redrawn[n]) for n, p in engine.named_parameters())
    engine.load_weights((n, t) for b in buckets for n, t in unpack_bucket(b, pack_bucket(b, original, "cpu")))
    assert [o.token_ids for o in engine.generate(prompt_ids, [GREEDY] * len(prompt_ids))] == before


def test_bucket_flats_refuse_a_plan_that_does_not_match(engine):
    from selfsteer.sync.buckets import plan_buckets

    layout = [(n, tuple(p.shape), p.dtype) for n, p in engine.named_parameters()]
    assert engine.bucket_flats(plan_buckets(layout[1:], 1 << 20)) is None  # a parameter missing
    assert engine.bucket_flats(plan_buckets([(n, s, torch.float16) for n, s, _ in layout], 1 << 20)) is None


def test_backend_registry():
    from selfsteer.engines.base import backend_class, vllm_available
    from selfsteer.engines.hf_engine import HFBackend

    assert backend_class("hf") is HFBackend
    if vllm_available():
        pytest.skip("vLLM is installed: 'auto' resolves to it")
    assert backend_class("auto") is HFBackend
    with pytest.raises(ImportError, match="pip install"):
        backend_class("vllm")


def test_unknown_backend_lists_valid_ones():
    from selfsteer.engines.base import backend_class

    with pytest.raises(ValueError) as err:
        backend_class("tgi")
    assert "'tgi'" in str(err.value)
    assert "['hf', 'hf_mod', 'vllm']" in str(err.value) and "'auto'" in str(err.value)

"""Flash-attention's varlen packing scores as SDPA does: packed rows as position ids vs the 4D mask.

Needs CUDA and flash_attn; collected and skipped elsewhere. fp16 (flash-attention runs 16-bit only;
fp16 keeps 3 more mantissa bits than bf16, so the kernels' differences stay visible against noise).
"""

from __future__ import annotations

import random

import pytest
import torch


def _flash_attn_imports() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:
        return False
    return True


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(not _flash_attn_imports(), reason="needs flash_attn (pip install flash-attn)"),
]


@pytest.fixture(scope="module")
def models(toy_model_path):
    from transformers import AutoModelForCausalLM

    load = lambda attn, dtype: AutoModelForCausalLM.from_pretrained(  # noqa: E731
        toy_model_path, dtype=dtype, attn_implementation=attn).to("cuda").eval()
    return {"flash": load("flash_attention_2", torch.float16), "sdpa": load("sdpa", torch.float16),
            "sdpa32": load("sdpa", torch.float32)}


@pytest.fixture(scope="module")
def rows(models):
    rng = random.Random(0)
    vocab = models["flash"].config.vocab_size
    distinct = [[rng.randrange(4, vocab) for _ in range(rng.randint(3, 60))] for _ in range(6)]
    contexts = [distinct[i % 6] for i in range(14)]  # shared contexts, as DPO's and SSO's rows
    responses = [[rng.randrange(4, vocab) for _ in range(rng.randint(1, 50))] for _ in range(14)]
    return contexts, responses


def _score(model, contexts, responses, **kw):
    from selfsteer.algorithms.logprobs import score_sequences

    return score_sequences(model, contexts, responses, pad_id=0, device="cuda", micro_batch_size=8,
                           mask_dtype=model.dtype, **kw)


def _per_token(model, contexts, responses, **kw):
    """Mean log-prob per token of each row: comparable across rows of any length."""
    sums, counts = _score(model, contexts, responses, **kw)
    return (sums / counts).float().cpu()


def test_flash_is_chosen_only_where_it_runs():
    from selfsteer.utils.runtime import attention_implementation

    assert attention_implementation("cuda", torch.float16) == "flash_attention_2"
    assert attention_implementation("cuda", torch.bfloat16) == "flash_attention_2"
    assert attention_implementation("cuda", torch.float32) is None
    assert attention_implementation("cpu", torch.bfloat16) is None


@torch.no_grad()
def test_flash_varlen_equals_sdpa_4d_mask_and_padded(models, rows):
    from selfsteer.algorithms.logprobs import packing_supported

    contexts, responses = rows
    truth = _per_token(models["sdpa32"], contexts, responses)  # fp32, padded rows
    flash_varlen = _per_token(models["flash"], contexts, responses, packed=True, varlen=True)
    flash_padded = _per_token(models["flash"], contexts, responses)
    sdpa_masked = _per_token(models["sdpa"], contexts, responses, packed=True)
    split = _per_token(models["flash"], contexts, responses, packed=True, varlen=True, split_head=True)
    for got in (flash_varlen, flash_padded, sdpa_masked, split):
        torch.testing.assert_close(got, truth, rtol=0, atol=1e-2)
    torch.testing.assert_close(flash_varlen, sdpa_masked, rtol=0, atol=1e-2)
    assert packing_supported(models["flash"], pad_id=0, device="cuda", vocab_size=models["flash"].config.vocab_size,
                             mask_dtype=torch.float16, varlen=True)


def test_flash_varlen_gradients_match_sdpa(models, rows):
    contexts, responses = rows
    weights = torch.linspace(-1, 1, len(contexts), device="cuda")

    def grads(model, **kw):
        model.zero_grad(set_to_none=True)
        sums, _ = _score(model, contexts, responses, packed=True, **kw)
        (sums.float() * weights).sum().backward()
        return torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])

    flash, sdpa = grads(models["flash"], varlen=True, split_head=True), grads(models["sdpa"])
    cosine = torch.nn.functional.cosine_similarity(flash, sdpa, dim=0).item()
    assert cosine > 0.999, cosine
    assert (flash.norm() / sdpa.norm()).item() == pytest.approx(1.0, abs=1e-2)


def test_reference_model_on_cuda_uses_flash_varlen(toy_model_path, models, rows):
    from selfsteer.actors.reference import ReferenceModel
    from selfsteer.config.schema import load_config

    cfg = load_config("configs/tiny_cpu.yaml", ["model.dtype=float16", "reference.device=cuda"])
    ref = ReferenceModel(str(toy_model_path), cfg.reference, cfg.model)
    assert ref.varlen and ref.packed and ref.split_head
    assert ref.model.config._attn_implementation == "flash_attention_2"
    contexts, responses = rows
    sums, counts = ref.score(contexts, responses)
    got = torch.tensor(sums) / torch.tensor(counts)
    torch.testing.assert_close(got, _per_token(models["sdpa32"], contexts, responses), rtol=0, atol=1e-2)

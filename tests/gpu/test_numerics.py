"""Log-probs (packed and padded) and the SSO loss on CUDA equal the CPU float32 result: exactly up to
float rounding in float32, within bf16 tolerance in bfloat16."""

from __future__ import annotations

import pytest
import torch

from selfsteer.algorithms.logprobs import packing_supported, score_sequences
from selfsteer.algorithms.sso import REQUIRED_KEYS, sso_loss

pytestmark = pytest.mark.gpu
BF16_NATS_PER_TOKEN = 0.05  # bf16 keeps 8 bits of mantissa: ~0.4% per logit, a few hundredths of a nat per token


def _scores(model_path, rows, device, dtype, packed):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    contexts, responses = rows
    with torch.no_grad():
        sums, counts = score_sequences(model, contexts, responses, pad_id=0, device=device,
                                       micro_batch_size=len(contexts), packed=packed, mask_dtype=dtype)
    return sums.cpu(), counts.cpu()


@pytest.fixture(scope="module")
def cpu_reference(toy_model_path, rows):
    return _scores(toy_model_path, rows, "cpu", torch.float32, packed=False)


@pytest.mark.parametrize("packed", [False, True])
def test_logprobs_on_cuda_equal_cpu(toy_model_path, rows, cpu_reference, packed):
    expected, counts = cpu_reference
    fp32, fp32_counts = _scores(toy_model_path, rows, "cuda", torch.float32, packed)
    torch.testing.assert_close(fp32, expected, rtol=1e-4, atol=1e-3)
    assert fp32_counts.tolist() == counts.tolist()
    bf16, _ = _scores(toy_model_path, rows, "cuda", torch.bfloat16, packed)
    per_token = (bf16 - expected).abs() / counts
    assert per_token.max().item() < BF16_NATS_PER_TOKEN, per_token.tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packing_check_passes_on_cuda(toy_model_path, dtype):
    """The trainer and reference pack rows only if this start-up check passes; on CUDA it must."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(toy_model_path, dtype=dtype).cuda().eval()
    assert packing_supported(model, pad_id=0, device="cuda", vocab_size=model.config.vocab_size, mask_dtype=dtype)


def _loss_inputs(sums, counts, device):
    keys = sorted(REQUIRED_KEYS["v1"])
    n = len(sums) // len(keys)
    policy = {k: sums[i * n:(i + 1) * n].to(device) for i, k in enumerate(keys)}
    reference = {k: (0.9 * sums[i * n:(i + 1) * n]).to(device) for i, k in enumerate(keys)}  # a fixed anchor
    lengths = {k: counts[i * n:(i + 1) * n].to(device) for i, k in enumerate(keys)}
    return policy, reference, lengths


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_sso_loss_on_cuda_equals_cpu(toy_model_path, rows, cpu_reference, variant):
    sums, counts = cpu_reference
    cpu_loss, cpu_metrics = sso_loss(*_loss_inputs(sums, counts, "cpu"), variant=variant)
    cuda_loss, cuda_metrics = sso_loss(*_loss_inputs(sums, counts, "cuda"), variant=variant)
    torch.testing.assert_close(cuda_loss.cpu(), cpu_loss, rtol=1e-5, atol=1e-6)
    assert cuda_metrics.keys() == cpu_metrics.keys()
    bf16, _ = _scores(toy_model_path, rows, "cuda", torch.bfloat16, packed=True)
    bf16_loss, _ = sso_loss(*_loss_inputs(bf16, counts, "cuda"), variant=variant)
    assert abs(bf16_loss.item() - cpu_loss.item()) < 0.02 + 0.02 * abs(cpu_loss.item())

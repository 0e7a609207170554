"""Helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from selfsteer.algorithms.sipo import fuse_logits

#: Chat prompts of different lengths (a batch of them is left-padded), some with a system principle.
PROMPTS = [("what is 3 plus 4 ?", None),
           ("tell a short story about a cat and a dog in the morning .", "be helpful and polite ."),
           ("hi", None),
           ("write a short list of fruit and tea .", "be rude and vague .")]


def redraw(model, seed: int, head_scale: float = 0.5) -> None:
    """Weights at a larger scale than the toy model's 0.02 init, so greedy text depends on the whole
    context (at 0.02 the toy model nearly repeats the last token, and padding bugs would go unseen)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                param.normal_(0, head_scale if ("embed" in name or "lm_head" in name) else 0.25, generator=gen)


def stop_word(text: str) -> tuple[str, int]:
    """A word from the middle of `text` whose first occurrence (as a substring) is that word."""
    words = text.split()
    for k in range(2, len(words)):
        word = words[k]
        start = len(" ".join(words[:k])) + 1
        if len(word) >= 3 and text.find(word) == start:
            return word, start
    raise AssertionError(f"no usable stop word in {text!r}")


def checkpoint_tensors(path) -> dict[str, torch.Tensor]:
    """A toy checkpoint's tensors under an engine's parameter names (a tied model has no separate head)."""
    from safetensors.torch import load_file

    return {n: t for n, t in load_file(path / "model.safetensors").items() if n != "lm_head.weight"}


def mod_greedy_reference(model_a, model_b, prompt: list[int], weight: float, max_new_tokens: int,
                         eos_ids=None) -> list[int]:
    """One prompt, no cache, no padding: the definition MOD decoding must match."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            x = torch.tensor([ids])
            z = fuse_logits(model_a(input_ids=x).logits[0, -1], model_b(input_ids=x).logits[0, -1], weight)
            ids.append(int(z.argmax()))
            if eos_ids and ids[-1] in eos_ids:
                break
    return ids[len(prompt):]



#: Toy-domain prompts the sync and LoRA tests generate on; a round's triples come from the first four.
SYNC_PROMPTS = ["write a short list of fruit and tea .", "what is 3 plus 4 ?", "tell a short story about a cat .",
                "how can i learn music fast ?", "describe the river in the morning .",
                "give three tips to improve a daily habit .", "explain why water is important for school .",
                "rewrite this sentence in a polite tone : tea is cold ."]


def sso_stack(ray, cfg, run_dir, engines: int):
    """The roles an SSO round needs, started as the run starts them: (inputs, trainer, pool, reference).
    The caller shuts the trainer and pool down (and kills the reference if it outlives the test)."""
    from selfsteer.actors.inputs import prepare_inputs
    from selfsteer.actors.reference import ReferenceModel
    from selfsteer.actors.rollout_pool import RolloutPool
    from selfsteer.actors.trainer_group import TrainerGroup

    inputs = prepare_inputs(cfg, run_dir)
    trainer = TrainerGroup(cfg, inputs.policy_path, total_steps=10)
    pool = RolloutPool(inputs.policy_path, cfg)
    pool.resize(engines)
    reference = ray.remote(ReferenceModel).options(num_cpus=0).remote(inputs.policy_path, cfg.reference, cfg.model)
    return inputs, trainer, pool, reference


def sso_round(pool, prompts=SYNC_PROMPTS[:4]):
    """One SSO round's data sampled on `pool`: per prompt a good-, a bad- and a no-principle answer
    (12 tokens, seed 3) as triples; returns (triples, the v1 loss's row keys, the rows to score)."""
    from selfsteer.algorithms.sso import REQUIRED_KEYS
    from selfsteer.data.triples import SSO_ROWS, Triple, scoring_rows
    from selfsteer.engines.base import ChatRequest, Sampling

    requests = []
    for p in prompts:
        requests += [ChatRequest(p, "be helpful and polite ."), ChatRequest(p, "be rude and vague ."), ChatRequest(p)]
    gens = pool.generate(requests, Sampling(max_new_tokens=12, seed=3))
    triples = [Triple(str(i), i, p, "g", "b", *gens[3 * i:3 * i + 3]) for i, p in enumerate(prompts)]
    keys = [k for k in SSO_ROWS if k in REQUIRED_KEYS["v1"]]
    return triples, keys, scoring_rows(triples, keys)


def train_sso_round(ray, cfg, trainer, pool, reference):
    """An SSO round on the trainer: `sso_round`'s rows scored by the reference actor; the ranks' results."""
    import dataclasses

    from selfsteer.data.triples import training_items

    triples, keys, rows = sso_round(pool)
    sums, _ = ray.get(reference.score.remote(*rows))
    return trainer.train(training_items(triples, keys, sums), keys, dataclasses.asdict(cfg.loss))


def assert_engines_hold_checkpoint(ray, trainer, pool, before: dict, ckpt, prompts, greedy) -> list[list[int]]:
    """After a sync: the trainer saves `ckpt`; training changed some weight of `before` (else the test
    proves nothing), every engine holds the saved weights exactly and answers `prompts` greedily as HF
    does on `ckpt`. Returns HF's token ids."""
    from safetensors.torch import load_file

    from selfsteer.engines.base import ChatRequest

    trainer.save_hf(str(ckpt))
    trained = load_file(ckpt / "model.safetensors")
    changed = [n for n, t in before.items() if not torch.equal(t, trained[n])]
    assert changed, "training changed no weight: the test would prove nothing"
    for engine in pool.engines:
        weights = ray.get(engine.named_weights.remote())
        assert set(weights) == set(trained) - {"lm_head.weight"}  # tied: the head is the embedding
        for name, tensor in weights.items():
            assert torch.equal(tensor, trained[name]), name
    expected = greedy_hf(ckpt, prompts)
    for engine in pool.engines:
        got = ray.get(engine.generate.remote([ChatRequest(p) for p in prompts], greedy))
        assert [g.token_ids for g in got] == expected
    return expected


def assert_request_order(engine, prompt_ids, greedy) -> None:
    """One call interleaving two sampling settings over four prompts: every result is its own request's,
    equal to that request generated alone, and the 5-token run of a prompt is the prefix of its greedy run."""
    from selfsteer.engines.base import Sampling

    short = Sampling(temperature=0.0, max_new_tokens=5)
    requests = [(prompt_ids[0], greedy), (prompt_ids[1], short), (prompt_ids[2], greedy), (prompt_ids[3], short),
                (prompt_ids[3], greedy), (prompt_ids[2], short), (prompt_ids[1], greedy)]
    outs = engine.generate([r for r, _ in requests], [s for _, s in requests])
    assert len(outs) == len(requests)
    for (ids, sampling), out in zip(requests, outs):
        alone = engine.generate([ids], [sampling])[0]
        assert out.prompt_ids == ids and out.token_ids == alone.token_ids
    assert outs[3].token_ids == outs[4].token_ids[:5]  # the same prompt under both settings


def assert_config_rejects(cases) -> None:
    """Each (config file, override, message pattern): `load_config` refuses it with a ConfigError saying so."""
    import pytest

    from selfsteer.config.schema import ConfigError, load_config

    for path, override, match in cases:
        with pytest.raises(ConfigError, match=match):
            load_config(path, [override])


def assert_stop_string_cuts(engine, prompt_ids, greedy):
    """A word of the first prompt's greedy text as stop string, in a batch with the third prompt: the
    first row ends with finish_reason 'stop' and exactly the text before the word. Returns (full,
    stopped, word, other) for each backend's own checks; `other` is the third prompt generated alone."""
    from selfsteer.engines.base import Sampling

    full = engine.generate([prompt_ids[0]], [greedy])[0]
    word, start = stop_word(full.text)
    stopped = engine.generate([prompt_ids[0], prompt_ids[2]],
                              [Sampling(temperature=0.0, max_new_tokens=12, stop=(word,))] * 2)
    assert stopped[0].finish_reason == "stop"
    assert stopped[0].text == full.text[:start] and word not in stopped[0].text
    return full, stopped, word, engine.generate([prompt_ids[2]], [greedy])[0]


def greedy_hf(model_dir, prompts, max_new_tokens: int = 16) -> list[list[int]]:
    """HF's greedy token ids per chat prompt, one prompt at a time (no padding anywhere), cut after EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfsteer.data.chat import encode_chat

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for p in prompts:
        ids = torch.tensor([encode_chat(tok, p)])
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        tokens = gen[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in tokens:
            tokens = tokens[:tokens.index(tok.eos_token_id) + 1]
        out.append(tokens)
    return out

"""A tiny Llama-architecture model and word-level chat tokenizer, built locally, never downloaded.

The model is a real `transformers` LlamaForCausalLM saved with `save_pretrained` (safetensors),
so every code path that loads a user's HF directory (trainer, reference, engines, vLLM) loads
this one too. Built once per settings into a cache directory whose name hashes the settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from selfsteer.toy.words import VOCAB_WORDS

_PRE_TOKEN = re.compile(r"\w+|[^\w\s]+")

BUILDER_VERSION = 1
SPECIAL_TOKENS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
# ChatML: a system turn only when given, so "no principle" really has no system block.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def default_cache_dir() -> Path:
    from selfsteer.utils.paths import cache_root

    return cache_root()


def _check_extra_words(extra_words) -> tuple[str, ...]:
    words = tuple(extra_words)
    for word in words:
        # The pre-tokenizer splits on \w+ / punctuation runs and lower-cases, so anything else never matches.
        if not isinstance(word, str) or not _PRE_TOKEN.fullmatch(word) or word != word.lower():
            raise ValueError(f"extra word {word!r} is not one lower-case pre-token (a run of letters/digits or of "
                             "punctuation); it could never be produced by the tokenizer")
    return words


def build_tokenizer(extra_words=()):
    """Word-level fast tokenizer with a ChatML template (lower-cased, punctuation split).

    Args:
        extra_words: words appended after the fixed vocabulary (those already in it are skipped),
            so a task can name its own things without changing any existing token id.

    Raises:
        ValueError: an extra word is not a single lower-case pre-token.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in (*VOCAB_WORDS, *_check_extra_words(extra_words)):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )
    return tokenizer


def _settings_key(settings: dict) -> str:
    blob = json.dumps({"v": BUILDER_VERSION, "vocab": len(VOCAB_WORDS), **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_toy_model(
    cache_dir: Optional[str | Path] = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    extra_words=(),
) -> Path:
    """Build (or reuse from cache) the toy model; returns its HF directory.

    Deterministic for a seed: the same settings give bit-identical safetensors. `extra_words`
    extend the vocabulary (see `build_tokenizer`) and are part of the cache key only when given,
    so every existing cache entry keeps its name.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, seed=seed,
    )
    extra_words = _check_extra_words(extra_words)
    if extra_words:
        settings["extra_words"] = list(extra_words)
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "toy"
    target = root / f"llama-{_settings_key(settings)}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target

    tokenizer = build_tokenizer(extra_words)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        torch_dtype="float32",
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    # Build in a temp dir and rename, so concurrent builders never see a half-written model.
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "selfsteer_toy.json").write_text(json.dumps(settings, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

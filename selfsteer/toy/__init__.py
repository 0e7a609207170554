"""The toy model and prompts used by the embedded default run and the tests."""

from selfsteer.toy.model import build_tokenizer, build_toy_model

__all__ = ["build_tokenizer", "build_toy_model"]

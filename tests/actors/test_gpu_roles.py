"""Roles that need a GPU, checked without one: the device index Ray's GPU ids give, the principle
writer's resources, and configs Ray or vLLM could not honour."""

from __future__ import annotations

import pytest

from selfsteer.config.schema import ConfigError, load_config
from selfsteer.utils.runtime import gpu_index

TINY = "configs/tiny_cpu.yaml"


@pytest.mark.parametrize("assigned, visible, index", [
    ([], None, 0),  # no GPU assigned (CPU role)
    (["3"], "3", 0),  # Ray's default: CUDA_VISIBLE_DEVICES is the assigned GPU
    (["3", "4"], "3,4", 0),
    (["3"], None, 3),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: all GPUs visible
    (["5"], "1, 3,5", 2),  # a CUDA_VISIBLE_DEVICES the user set, kept by NOSET
    ([3], "", 3),
])
def test_gpu_index_from_ray_ids(assigned, visible, index):
    assert gpu_index(assigned, visible) == index


def test_gpu_index_refuses_a_gpu_the_process_cannot_see():
    with pytest.raises(RuntimeError, match="Ray assigned GPU 2, which CUDA_VISIBLE_DEVICES='0,1' does not list"):
        gpu_index(["2"], "0,1")


def test_fractional_engine_gpus_with_tensor_parallelism_are_rejected():
    load_config(TINY, ["rollout.num_gpus=0.5"])  # one worker on half a GPU is fine
    load_config(TINY, ["rollout.num_gpus=1", "rollout.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match=r"rollout.num_gpus=0.5 with rollout.tensor_parallel_size=2: each "
                                          r"tensor-parallel worker needs a whole GPU"):
        load_config(TINY, ["rollout.num_gpus=0.5", "rollout.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match="rollout.num_gpus=-1.0 must be >= 0"):
        load_config(TINY, ["rollout.num_gpus=-1"])


def test_a_local_principle_model_gets_its_configured_resources():
    writer = ["principles.mode=llm", "principles.llm.source=model", "principles.llm.model_path=/m/writer"]
    cfg = load_config(TINY, writer + ["principles.llm.num_gpus=1", "principles.llm.num_cpus=2"])
    assert cfg.principles.llm.actor_resources(cfg.principles.mode) == {"num_cpus": 2.0, "num_gpus": 1.0}
    # The policy's engines or an HTTP server write the principles: the actor itself only waits.
    cfg = load_config(TINY, ["principles.mode=llm", "principles.llm.num_gpus=1"])
    assert cfg.principles.llm.actor_resources(cfg.principles.mode) == {"num_cpus": 0.0, "num_gpus": 0.0}
    with pytest.raises(ConfigError, match="principles.llm.num_cpus"):
        load_config(TINY, writer + ["principles.llm.num_cpus=-2"])

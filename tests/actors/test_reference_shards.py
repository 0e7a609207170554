"""reference.num_actors: rows dealt out by context, scored data-parallel, returned in request order."""

from __future__ import annotations

import os
import random
import signal

import pytest

from selfsteer.actors.reference import shard_rows


def test_shard_rows_keeps_contexts_together_and_balances_tokens():
    a, b, c = [1] * 10, [2] * 4, [3] * 3
    contexts = [a, b, a, c, b, c]
    responses = [[9] * 5, [9] * 2, [9] * 5, [9] * 1, [9] * 2, [9] * 1]
    # Groups by tokens: a = 10 + 5 + 5 = 20, b = 4 + 2 + 2 = 8, c = 3 + 1 + 1 = 5.
    assert shard_rows(contexts, responses, 2) == [[0, 2], [1, 3, 4, 5]]  # 20 | 8 + 5
    assert shard_rows(contexts, responses, 3) == [[0, 2], [1, 4], [3, 5]]
    assert shard_rows(contexts, responses, 1) == [[0, 1, 2, 3, 4, 5]]
    assert shard_rows(contexts[:1], responses[:1], 3) == [[0], [], []]  # more actors than contexts


@pytest.mark.slow
def test_two_reference_actors_score_as_one_and_survive_a_kill(ray_local, toy_model_path):
    import ray

    from selfsteer.actors.reference import ReferenceModel
    from selfsteer.config.schema import load_config
    from selfsteer.actors.roles import Roles

    cfg = load_config("configs/tiny_cpu.yaml", ["reference.micro_batch_size=4", "ray.max_restarts=1"])
    start = lambda: ray.remote(ReferenceModel).options(num_cpus=0.25, max_restarts=1, max_task_retries=0).remote(  # noqa: E731
        str(toy_model_path), cfg.reference, cfg.model)
    actors = [start() for _ in range(3)]
    ray.get([a.ready.remote() for a in actors])
    one = Roles(cfg, None, None, actors[:1], None, None)
    two = Roles(cfg, None, None, actors[1:], None, None)

    rng = random.Random(0)
    distinct = [[rng.randrange(4, 200) for _ in range(rng.randint(3, 20))] for _ in range(7)]
    contexts = [distinct[rng.randrange(7)] for _ in range(23)]
    responses = [[rng.randrange(4, 200) for _ in range(rng.randint(1, 12))] for _ in range(23)]
    assert all(shard_rows(contexts, responses, 2))  # both actors get rows

    sums, counts = one.reference_scores(contexts, responses)
    got_sums, got_counts = two.reference_scores(contexts, responses)
    assert got_counts == counts == [float(len(r)) for r in responses]
    assert got_sums == pytest.approx(sums, rel=1e-5, abs=1e-4)
    tokens = one.reference_token_scores(contexts, responses)
    got_tokens = two.reference_token_scores(contexts, responses)
    assert [len(t) for t in got_tokens] == [len(r) for r in responses]
    assert sum(got_tokens, []) == pytest.approx(sum(tokens, []), rel=1e-5, abs=1e-5)

    # The second actor dies; its share is re-issued to the restarted process, the answer unchanged.
    pid = ray.get(actors[2].__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)
    again, _ = two.reference_scores(contexts, responses)
    assert again == pytest.approx(sums, rel=1e-5, abs=1e-4)
    assert ray.get(actors[2].__ray_call__.remote(lambda self: os.getpid())) != pid
    for a in actors:
        ray.kill(a)


def test_num_actors_must_be_positive():
    from selfsteer.config.schema import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"reference.num_actors=0 must be > 0"):
        load_config("configs/tiny_cpu.yaml", ["reference.num_actors=0"])

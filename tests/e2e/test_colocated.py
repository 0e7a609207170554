"""placement=colocated on CPU, end to end: engines sleep while the trainer trains (RSS freed, in
the metrics), weights come back through shared memory, and the engines then sample exactly what
the trainer's weights (its HF checkpoint) and the separate layout's engines sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

GREEDY_TOKENS = 12


def _requests():
    from selfsteer.engines.base import ChatRequest

    return [ChatRequest("tell a short story about a cat ."), ChatRequest("what is 3 plus 4 ?", system="be brief .")]


def _run(placement: str, out: Path, toy_cache, extra=()) -> dict:
    import ray

    from selfsteer.config.schema import load_config
    from selfsteer.run.driver import run
    from selfsteer.engines.base import Sampling

    cfg = load_config("configs/tiny_cpu.yaml", ["rounds=2", f"placement={placement}", f"output_dir={out}",
                                                f"model.cache_dir={toy_cache}", "tensorboard=false", *extra])
    seen = {}

    def capture(round_index, roles):
        if round_index == 2:  # the engines hold round 1's trained weights
            greedy = Sampling(temperature=0.0, max_new_tokens=GREEDY_TOKENS)
            seen["greedy"] = [[g.token_ids for g in ray.get(e.generate.remote(_requests(), greedy))]
                              for e in roles.pool.engines]
            seen["weights"] = ray.get(roles.pool.engines[0].named_weights.remote())

    run(cfg, on_round_start=capture)
    seen["metrics"] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return seen


def test_colocated_run_sleeps_syncs_by_shm_and_samples_like_separate(ray_local, tmp_path, toy_cache):
    from transformers import AutoModelForCausalLM

    from selfsteer.data.chat import encode_chat
    from selfsteer.engines.base import Sampling
    from selfsteer.engines.hf_engine import HFBackend
    from selfsteer.sync.shm import POOL_SLOTS

    before = {p.name for p in Path("/dev/shm").glob("selfsteer-*")}
    # Buckets of 0.05 MB: about ten of them for the 0.42 MiB toy, so the two-slot pool cycles.
    colocated = _run("colocated", tmp_path / "colocated", toy_cache, ["sync.bucket_mb=0.05"])
    assert {p.name for p in Path("/dev/shm").glob("selfsteer-*")} == before  # the segment was unlinked
    for m in colocated["metrics"]:
        assert m["sync/shm"] == 1.0 and m["rollout/sleep_supported"] == 1.0
        assert m["rollout/sleep_rss_freed_mb"] > 0, m
        assert "time/sleep" in m
        # The bounded pool (issue 23): never more than POOL_SLOTS buckets live, the pool far below the model.
        assert m["sync/buckets"] > POOL_SLOTS and 1 <= m["sync/pool_peak_buckets"] <= POOL_SLOTS, m
        assert m["sync/pool_mbytes"] * 2 ** 20 < 0.7 * m["sync/gbytes"] * 1e9, m  # 2 x the embedding, not the model

    # The engines hold the trainer's round-1 weights bit for bit, and sample what they sample.
    ckpt = tmp_path / "colocated" / "checkpoints" / "round_0001"
    trainer = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    for name, p in trainer.named_parameters():
        assert torch.equal(colocated["weights"][name], p.detach()), name
    backend = HFBackend(str(ckpt), device="cpu")
    ids = [encode_chat(backend.tokenizer, r.prompt, r.system) for r in _requests()]
    want = [g.token_ids for g in backend.generate(ids, [Sampling(temperature=0.0, max_new_tokens=GREEDY_TOKENS)] * 2)]
    assert all(engine == want for engine in colocated["greedy"])

    separate = _run("separate", tmp_path / "separate", toy_cache)
    assert all("sync/shm" in m and m["sync/shm"] == 0.0 and "rollout/sleep_rss_freed_mb" not in m
               for m in separate["metrics"])
    assert separate["greedy"] == colocated["greedy"]
    for name, w in separate["weights"].items():
        assert torch.equal(w, colocated["weights"][name]), name

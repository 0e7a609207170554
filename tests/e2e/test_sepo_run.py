"""SePO end to end: two real online rounds on the toy model (oracle DPO-trained and cached, engines,
ZeRO-3 trainer). The unit tests are in tests/online/test_sepo.py."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_two_online_rounds_on_the_toy_model(ray_local, tmp_path, toy_cache):
    from selfsteer.config.schema import load_config
    from selfsteer.run.driver import run

    out = tmp_path / "sepo"
    cfg = load_config("configs/sepo_tiny_cpu.yaml", [f"output_dir={out}", f"model.cache_dir={toy_cache}",
                                                      "tensorboard=false"])
    run(cfg)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2]
    oracle_dirs = list(toy_cache.glob("sepo-oracle-*"))
    assert len(oracle_dirs) == 1  # trained once, cached
    stats = json.loads((oracle_dirs[0] / "oracle.json").read_text())
    assert stats["last_loss"] < stats["first_loss"] - 0.1  # the oracle's DPO learned the toy preference
    for m in metrics:
        assert m["data/pairs"] >= 4 and m["train/optimizer_steps"] >= 1
        assert m["oracle/seq_reward_chosen"] >= m["oracle/seq_reward_rejected"]  # labelled by the oracle
        assert 0.2 <= m["sepo/selected_token_share"] <= 0.31  # int(30%) of each response's tokens (>= 1)
    rows = [json.loads(x) for x in (out / "rounds" / "round_0001" / "pairs.jsonl").read_text().splitlines()]
    assert all(r["oracle_reward"][0] >= r["oracle_reward"][1] and r["selected_chosen"] for r in rows)
    for r in rows:  # int(30%) of each response's tokens (EOS included), at least one
        assert len(r["selected_chosen"]) == max(1, int(0.3 * r["tokens"][0]))
        assert len(r["selected_rejected"]) == max(1, int(0.3 * r["tokens"][1]))
        assert max(r["selected_chosen"]) < r["tokens"][0] and max(r["selected_rejected"]) < r["tokens"][1]
    from safetensors.torch import load_file

    start = load_file(str(next(p for p in toy_cache.rglob("model.safetensors") if "sepo-oracle" not in str(p))))
    final = load_file(str(out / "checkpoints" / "round_0002" / "model.safetensors"))
    assert any(not torch.equal(start[k], final[k]) for k in start)  # the policy moved

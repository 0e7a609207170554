"""ZeRO-3 ranks build the model partitioned and read only their own slice of each tensor
(training/zero3_load.py): loading gathers no parameter, no rank holds any parameter whole
afterwards, and save_hf's streamed gather writes the checkpoint back byte for byte. Two gloo ranks
on CPU, the same code as NCCL ranks on GPUs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp


# Gathers only: zero.Init itself broadcasts each freshly built module in place (rank 0's values)
# before partitioning it, in both loaders; that costs no second copy.
GATHERS = ("all_gather", "all_gather_into_tensor", "_all_gather_base", "all_gather_single")


def _count_gathers(dist) -> dict[str, int]:
    """Wrap torch.distributed's gathers before DeepSpeed binds them; returns the live count."""
    counts = {"n": 0}
    for name in GATHERS:
        fn = getattr(dist, name, None)
        if fn is None:
            continue

        def counted(*args, _fn=fn, **kwargs):
            counts["n"] += 1
            return _fn(*args, **kwargs)

        setattr(dist, name, counted)
    return counts


def _rank(rank: int, world: int, model_path: str, store_path: str, out_dir: str) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", LOCAL_RANK="0", RANK=str(rank), WORLD_SIZE=str(world))
    import torch.distributed as dist

    counts = _count_gathers(dist)

    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    import deepspeed
    from transformers import AutoModelForCausalLM

    from selfsteer.config.schema import load_config
    from selfsteer.training.deepspeed_backend import partitioned_loading
    from selfsteer.training.streamed_save import save_streamed
    from selfsteer.training.zero3_load import load_for_training

    deepspeed.init_distributed(dist_backend="gloo")
    tc = load_config(None, ["trainer.backend=deepspeed", "trainer.zero_stage=3", f"trainer.num_ranks={world}"]).trainer
    dist.barrier()
    before = counts["n"]
    model, keep, fallback = load_for_training(model_path, tc, torch.float32)
    params = dict(model.named_parameters())
    report = {"fallback": fallback, "load_gathers": counts["n"] - before,"whole": sum(p.numel() for p in params.values()),  # placeholders: 0 when partitioned
              "held": sum(p.ds_tensor.numel() for p in params.values() if hasattr(p, "ds_tensor")),
              "total": sum(getattr(p, "ds_numel", p.numel()) for p in params.values()),
              "partitioned": all(hasattr(p, "ds_tensor") for p in params.values())}
    from selfsteer.training.base import make_optimizer_and_scheduler

    optimizer, _ = make_optimizer_and_scheduler(model, tc, 4)  # weight decay by the real shape, not the placeholder's
    report["decayed"] = sorted(len(getattr(p, "ds_shape", p.shape)) for p in optimizer.param_groups[0]["params"])[:1]
    report["not_decayed"] = sorted({len(p.ds_shape) for p in optimizer.param_groups[1]["params"]})
    stats = save_streamed(model, os.path.join(out_dir, "ckpt"), writer=rank == 0,
                          gather=lambda ps: deepspeed.zero.GatheredParameters(ps, modifier_rank=None))
    report["written"] = stats.tensors
    del keep
    # The control for the count: transformers' own ZeRO-3 loader gathers each module to every rank.
    keep = partitioned_loading(tc, torch.float32)
    before = counts["n"]
    AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    report["gathered_gathers"] = counts["n"] - before
    del keep
    # The control: the same load without the DeepSpeed config materialises every parameter here.
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    plain = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    report["plain_whole"] = sum(p.numel() for p in plain.parameters())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(report, fh)
    dist.barrier()
    dist.destroy_process_group()


def test_zero3_ranks_load_partitioned_and_save_back_byte_for_byte(toy_model_path, tmp_path):
    from safetensors.torch import load_file

    world = 2
    mp.spawn(_rank, args=(world, str(toy_model_path), str(tmp_path / "store"), str(tmp_path)), nprocs=world)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    total = reports[0]["total"]
    for r in reports:
        assert r["fallback"] is None and r["load_gathers"] == 0  # no parameter gathered: slices read
        assert r["gathered_gathers"] > 0  # the counter sees transformers' gathered loading
        assert r["partitioned"] and r["whole"] == 0  # no parameter whole on any rank after loading
        assert r["held"] <= total / world + 64 * 64  # its share (DeepSpeed pads each partition a little)
        assert r["plain_whole"] == total  # without zero.Init every rank would hold all of it
    assert sum(r["held"] for r in reports) >= total
    assert all(r["decayed"] == [2] and r["not_decayed"] == [1] for r in reports)  # matrices decay, norms do not
    assert reports[0]["written"] > 0 and reports[1]["written"] == 0
    original = {}
    for f in sorted(Path(toy_model_path).glob("*.safetensors")):
        original.update(load_file(str(f)))
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert set(saved) == set(original)
    for name, tensor in original.items():
        assert saved[name].dtype == tensor.dtype and torch.equal(saved[name].view(torch.uint8), tensor.view(torch.uint8))


def test_rows_for_range_by_hand():
    from selfsteer.training.zero3_load import rows_for_range

    # a 5 x 4 matrix: flat [6, 13) lies in rows 1..3, starting 2 elements into row 1
    assert rows_for_range((5, 4), 6, 13) == (1, 4, 2)
    assert rows_for_range((5, 4), 0, 20) == (0, 5, 0)
    assert rows_for_range((5, 4), 8, 12) == (2, 3, 0)  # exactly one row
    assert rows_for_range((7,), 3, 6) == (3, 6, 0)  # a vector: one-element rows
    assert rows_for_range((2, 3, 2), 5, 7) == (0, 2, 5)  # rows of 3 x 2 = 6 elements


def test_read_partition_matches_the_flat_slice(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from selfsteer.training.zero3_load import read_partition

    tensors = {"m": torch.arange(60, dtype=torch.float32).reshape(5, 12), "v": torch.arange(7.0),
               "s": torch.tensor(3.5)}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as fh:
        for name, t in tensors.items():
            flat = t.reshape(-1)
            n = flat.numel()
            for start, end in {(0, n), (0, 1), (n - 1, n), (min(1, n - 1), max(1, n // 2))}:
                got = read_partition(fh, name, start, end, torch.bfloat16)
                assert got.dtype == torch.bfloat16 and torch.equal(got, flat[start:end].to(torch.bfloat16)), (name, start, end)

"""ZeRO-3 ranks build the model partitioned (zero.Init via HfDeepSpeedConfig): after loading no rank
holds any parameter whole, only its share; and save_hf's streamed gather writes the checkpoint back
byte for byte. Two gloo ranks on CPU, the same code as NCCL ranks on GPUs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _rank(rank: int, world: int, model_path: str, store_path: str, out_dir: str) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", LOCAL_RANK="0", RANK=str(rank), WORLD_SIZE=str(world))
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    import deepspeed
    from transformers import AutoModelForCausalLM

    from selfsteer.config.schema import load_config
    from selfsteer.training.deepspeed_backend import partitioned_loading
    from selfsteer.training.streamed_save import save_streamed

    deepspeed.init_distributed(dist_backend="gloo")
    tc = load_config(None, ["trainer.backend=deepspeed", "trainer.zero_stage=3", f"trainer.num_ranks={world}"]).trainer
    keep = partitioned_loading(tc, torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    params = dict(model.named_parameters())
    report = {"whole": sum(p.numel() for p in params.values()),  # placeholders: 0 when partitioned
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

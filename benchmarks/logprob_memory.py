"""Peak memory of the reference scorer: unchunked log-softmax vs chunked log-probs, on CPU.

One packed row of 4,096 tokens (a 1,024-token context and three 1,024-token responses scored
under it, 3,072 scored tokens) through a toy Llama with a 150k vocabulary (hidden size 64, so the
vocabulary dominates), scored by `score_sequences` as `ReferenceModel.score` calls it (no grad,
packed). Three ways, each in a fresh subprocess:

- unchunked: full logits, then one float32 log-softmax over every scored token (`chunk_size=0`, the
  code before chunking);
- chunked logits: full logits, log-softmax `--chunk` tokens at a time;
- split head: decoder hidden states, lm_head applied per chunk (what the reference runs).

Peak memory is the process's resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs right before scoring) minus its resident set just before scoring: tracemalloc
does not see torch's allocations, RSS does. Linux only.

    python benchmarks/logprob_memory.py                       # 150k vocab, 4k tokens, chunk 512
    python benchmarks/logprob_memory.py --grad                # forward + backward (the trainer's loss)

The last line is `logprob peak memory ratio: <unchunked / split head>`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout import machine  # noqa: E402  (the sibling benchmark's machine line)

MODES = {"unchunked": dict(chunk_size=0), "chunked logits": dict(), "split head": dict(split_head=True)}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(args) -> dict:
    """Build the toy model and row, then score once under a fresh RSS high-water mark."""
    import time

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from selfsteer.algorithms.logprobs import score_sequences

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=args.tokens,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(dtype)
    model.train(args.grad)
    quarter = args.tokens // 4
    ids = torch.randint(4, args.vocab, (args.tokens,)).tolist()
    contexts = [ids[:quarter]] * 3
    responses = [ids[(k + 1) * quarter:(k + 2) * quarter] for k in range(3)]
    kwargs = dict(pad_id=0, device="cpu", micro_batch_size=3, packed=True, mask_dtype=dtype, chunk_size=args.chunk)
    kwargs.update(MODES[args.child])
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start = time.perf_counter()
    with torch.set_grad_enabled(args.grad):
        sums, _ = score_sequences(model, contexts, responses, **kwargs)
        if args.grad:
            sums.sum().backward()
    seconds = time.perf_counter() - start
    return {"peak_mb": (_status_kb("VmHWM") - before) / 1024, "seconds": seconds, "sums": sums.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=150_000)
    parser.add_argument("--tokens", type=int, default=4096, help="packed row width (a multiple of 4)")
    parser.add_argument("--chunk", type=int, default=512, help="scored tokens per log-softmax chunk")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--grad", action="store_true", help="forward and backward, as the trainer's loss")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(machine())
    print(f"vocab {args.vocab}, one packed row of {args.tokens} tokens ({3 * args.tokens // 4} scored), "
          f"{args.dtype}, chunk {args.chunk}, {'forward + backward' if args.grad else 'no grad (reference)'}")
    results = {}
    for mode in MODES:
        cmd = [sys.executable, __file__, "--child", mode, "--vocab", str(args.vocab), "--tokens", str(args.tokens),
               "--chunk", str(args.chunk), "--dtype", args.dtype, "--threads", str(args.threads)]
        out = subprocess.run(cmd + (["--grad"] if args.grad else []), check=True, capture_output=True, text=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{mode:>15}: peak +{results[mode]['peak_mb']:8.0f} MB, {results[mode]['seconds']:.2f} s")
    base = results["unchunked"]["sums"]
    for mode in MODES:
        drift = max(abs(a - b) for a, b in zip(results[mode]["sums"], base))
        print(f"{mode:>15}: max |summed log-prob - unchunked| = {drift:.2e}")
    print(f"logprob peak memory ratio: {results['unchunked']['peak_mb'] / results['split head']['peak_mb']:.2f}")


if __name__ == "__main__":
    main()

"""Command-line wiring of the model tools: `selfsteer import-gguf | eval | export`."""

from __future__ import annotations

import argparse
import logging
import sys

COMMANDS = ("import-gguf", "eval", "export")


def add_subcommands(subparsers) -> None:
    imp = subparsers.add_parser("import-gguf", help="a GGUF model file -> a tied, loadable HF model directory",
                                description="dequantize a GGUF file with transformers' loader and save it as "
                                            "safetensors with its tokenizer and chat template")
    imp.add_argument("file", help="the .gguf file")
    imp.add_argument("out_dir", help="new HF model directory (must not hold a model yet)")
    imp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    imp.add_argument("--log-level", default="INFO")

    ev = subparsers.add_parser("eval", help="greedy and sampled generations of a checkpoint on a prompts file",
                               description="selfsteer eval CHECKPOINT_OR_RUN --prompts FILE: generations, "
                                           "gold scores where the prompts name a known task, win rate vs --baseline")
    ev.add_argument("model", help="HF model directory, or a run directory (its last checkpoint)")
    ev.add_argument("--prompts", required=True, help='prompts file ("prompt" field; .json, .jsonl or .parquet)')
    ev.add_argument("--baseline", help="HF model directory or run to compare against (win rate needs a scorer)")
    ev.add_argument("--samples", type=int, default=1, help="sampled generations per prompt besides the greedy one")
    ev.add_argument("--max-new-tokens", type=int, default=128)
    ev.add_argument("--temperature", type=float, default=0.7)
    ev.add_argument("--top-p", type=float, default=0.8)
    ev.add_argument("--scorer", default="auto", choices=("auto", "none", "task"),
                    help="gold scorer: auto (the alignment task's when every prompt is one of its prompts), none, task")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", help="JSONL to write, one row per prompt (and OUT.summary.json); omitted: summary only")
    ev.add_argument("--log-level", default="INFO")

    ex = subparsers.add_parser("export", help="generations -> a judge's input format (AlpacaEval); or a LoRA "
                                              "checkpoint merged into its base (--merge)",
                               description="selfsteer export RUN_OR_EVAL_FILE --format alpaca_eval --out FILE | "
                                           "selfsteer export --merge ADAPTER_CKPT OUT_DIR")
    ex.add_argument("source", nargs="?", help="an eval JSONL (selfsteer eval --out) or a run directory (its last round's y^o)")
    ex.add_argument("--merge", nargs=2, metavar=("CKPT", "OUT"),
                    help="write the adapter checkpoint CKPT merged into its base model as an HF model in OUT")
    ex.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="with --merge: the merged model's dtype")
    ex.add_argument("--format", choices=("alpaca_eval",))
    ex.add_argument("--out", help="JSON file to write")
    ex.add_argument("--generator", help="the `generator` name (default: the model's or run's directory name)")
    ex.add_argument("--which", default="greedy", choices=("greedy", "sample"),
                    help="from an eval file: the greedy generation or the first sample")
    ex.add_argument("--log-level", default="INFO")


def dispatch(args: argparse.Namespace) -> int:
    """Run one of COMMANDS; 2 on bad input (message on stderr), 0 on success."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "import-gguf":
            from selfsteer.tools.gguf_import import import_gguf

            out = import_gguf(args.file, args.out_dir, args.dtype)
            print(f"selfsteer: wrote {out}")
        elif args.command == "eval":
            from selfsteer.tools.model_eval import run_eval

            summary = run_eval(args.model, args.prompts, baseline=args.baseline, samples=args.samples,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                               scorer=args.scorer, seed=args.seed, out=args.out)
            print("selfsteer eval:", " ".join(f"{k}={v}" for k, v in summary.items()))
        elif args.command == "export" and args.merge:
            from selfsteer.training.lora import export_merged

            out = export_merged(args.merge[0], args.merge[1], args.dtype)
            print(f"selfsteer: wrote {out}")
        elif args.command == "export":
            from selfsteer.tools.model_eval import export_alpaca_eval

            if not (args.source and args.format and args.out):
                raise ValueError("export needs SOURCE --format alpaca_eval --out FILE, or --merge CKPT OUT")

            out = export_alpaca_eval(args.source, args.out, generator=args.generator, which=args.which)
            print(f"selfsteer: wrote {out}")
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"selfsteer {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0

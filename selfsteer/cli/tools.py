"""Command-line wiring of the model tools: `selfsteer import-gguf | eval | export | probe`.

`selfsteer.cli.main` adds these with `add_subcommands`; each parser names its handler (`set_defaults`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable

from selfsteer.tools.model_eval import MODES, SCORERS


def add_subcommands(subparsers) -> None:
    """Add import-gguf, eval, export and probe to `selfsteer`'s subparsers."""
    imp = subparsers.add_parser("import-gguf", help="a GGUF model file -> a tied, loadable HF model directory",
                                description="dequantize a GGUF file with transformers' loader and save it as "
                                            "safetensors with its tokenizer and chat template")
    imp.add_argument("file", help="the .gguf file")
    imp.add_argument("out_dir", help="new HF model directory (must not hold a model yet)")
    imp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    imp.add_argument("--log-level", default="INFO")
    imp.set_defaults(handler=_import_gguf)

    ev = subparsers.add_parser(
        "eval", help="answer a prompts file with a checkpoint and score it (IFEval/IFBench constraints, the toy task)",
        description="selfsteer eval CHECKPOINT_OR_RUN --prompts FILE: greedy (and optionally sampled) answers, scored "
                    "where the rows say how, and compared with --baseline.",
        epilog="Fields read from FILE (.jsonl, .json or .parquet): the prompt from 'prompt', else AlpacaEval's "
               "'instruction'; the id from 'uuid', else IFEval's 'key', else the row number; and, for the ifeval and "
               "ifbench scorers, 'instruction_id_list' with one 'kwargs' dict per instruction, as IFEval and IFBench "
               "write them. A row naming a checker that cannot run offline is listed as not scored.")
    ev.add_argument("model", help="HF model directory, or a run directory (its final checkpoint)")
    ev.add_argument("--prompts", required=True, help="prompts file (fields: see below)")
    ev.add_argument("--baseline", help="HF model directory or run to compare against (win rate needs a scorer)")
    ev.add_argument("--samples", type=int, default=0,
                    help="sampled answers per prompt besides the greedy one (default 0: greedy only); each sample "
                         "costs about as much time as the greedy pass, so 1 doubles the time")
    ev.add_argument("--max-new-tokens", type=int, default=128)
    ev.add_argument("--temperature", type=float, default=0.7, help="for the sampled answers")
    ev.add_argument("--top-p", type=float, default=0.8, help="for the sampled answers")
    ev.add_argument("--scorer", default="auto", choices=SCORERS,
                    help="auto: ifeval or ifbench when every row has an instruction_id_list (the library that knows "
                         "its ids), else task when every prompt is one of the toy alignment task's, else none; "
                         "ifeval: IFEval's checkers (if-verifiable), strict and loose, prompt- and instruction-level, "
                         "as the real-model benchmark runs them offline; ifbench: IFBench's own verifiers, the same "
                         "way; task: the toy task's gold reward; none: answers only")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", help="JSONL to write, one row per prompt (and OUT.summary.json); omitted: summary only")
    ev.add_argument("--log-level", default="INFO")
    ev.set_defaults(handler=_eval)

    ex = subparsers.add_parser("export", help="answers -> a judge's input format (AlpacaEval); or a LoRA "
                                              "checkpoint merged into its base (--merge)",
                               description="selfsteer export EVAL_FILE --format alpaca_eval --out FILE, or "
                                           "selfsteer export RUN_DIR --prompts FILE --format alpaca_eval --out FILE, or "
                                           "selfsteer export --merge ADAPTER_CKPT OUT_DIR")
    ex.add_argument("source", nargs="?", help="an eval JSONL (selfsteer eval --out), or a run directory (its final "
                                              "checkpoint answers --prompts greedily; never the training samples)")
    ex.add_argument("--merge", nargs=2, metavar=("CKPT", "OUT"),
                    help="write the adapter checkpoint CKPT merged into its base model as an HF model in OUT")
    ex.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="with --merge: the merged model's dtype")
    ex.add_argument("--format", choices=("alpaca_eval",))
    ex.add_argument("--out", help="JSON file to write")
    ex.add_argument("--prompts", help="with a run directory: the prompts to answer ('prompt' or 'instruction' field, "
                                      "e.g. AlpacaEval's own question file)")
    ex.add_argument("--max-new-tokens", type=int, default=128, help="with a run directory")
    ex.add_argument("--generator", help="the `generator` name (default: the model's or run's directory name)")
    ex.add_argument("--which", default="greedy", choices=("greedy", "sample"),
                    help="from an eval file: the greedy generation or the first sample")
    ex.add_argument("--log-level", default="INFO")
    ex.set_defaults(handler=_export)

    pr = subparsers.add_parser("probe", help="can the config's principles steer its policy? gap, compliance, verdict",
                               description="selfsteer probe CONFIG [key=value ...] [--prompts N] [--out DIR]: per "
                                           "principle dimension, answers with no / good / bad principle, the log-prob "
                                           "steering gap, check compliance and a verdict (probe.{json,md,png})")
    pr.add_argument("config", help="run config YAML (model.policy, data.prompts, principles.*, rollout.sampling)")
    pr.add_argument("overrides", nargs="*", help="dotted overrides, as for run")
    pr.add_argument("--prompts", type=int, default=16, help="prompts per dimension")
    pr.add_argument("--out", default=None, help="directory for probe.json, probe.md and probe.png")
    pr.add_argument("--dimensions", nargs="+", default=None, help="probe only these (merged into an existing probe.json)")
    pr.add_argument("--max-new-tokens", type=int, default=None, help="default: rollout.sampling.max_new_tokens")
    pr.add_argument("--batch-size", type=int, default=16)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--placement", default=None, choices=("system", "user", "user_before"),
                    help="where the principle goes: the system prompt, after or before the user's question "
                         "(default: the config's principles.placement, as the run places it)")
    pr.add_argument("--log-level", default="INFO")
    pr.set_defaults(handler=_probe)


def _tool(fn: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], int]:
    """A tool's handler: its logging, and bad input as one line on stderr with exit status 2."""

    @functools.wraps(fn)
    def handler(args: argparse.Namespace) -> int:
        from selfsteer.benchmark.realbench.checkers import CheckerError

        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            fn(args)
        except (ValueError, FileNotFoundError, FileExistsError, CheckerError) as exc:
            print(f"selfsteer {args.command}: {exc}", file=sys.stderr)
            return 2
        return 0

    return handler


@_tool
def _import_gguf(args: argparse.Namespace) -> None:
    from selfsteer.tools.gguf_import import import_gguf

    out = import_gguf(args.file, args.out_dir, args.dtype)
    print(f"selfsteer: wrote {out}")


@_tool
def _eval(args: argparse.Namespace) -> None:
    from selfsteer.tools.model_eval import format_table, run_eval

    summary = run_eval(args.model, args.prompts, baseline=args.baseline, samples=args.samples,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       scorer=args.scorer, seed=args.seed, out=args.out)
    tabled = summary["scorer"] in ("ifeval", "ifbench")  # its accuracies go into the table below
    flat = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))
            and not (tabled and k.endswith(MODES))}
    print("selfsteer eval:", " ".join(f"{k}={v}" for k, v in flat.items()))
    if tabled:
        print(format_table(summary))
    if args.samples:
        print(f"selfsteer eval: {args.samples} sampled answer(s) a prompt took {summary['sampled_s']:.0f} s, "
              f"the greedy answers {summary['greedy_s']:.0f} s (--samples 0: greedy only)")


@_tool
def _export(args: argparse.Namespace) -> None:
    if args.merge:
        from selfsteer.training.lora import export_merged

        out = export_merged(args.merge[0], args.merge[1], args.dtype)
    else:
        from selfsteer.tools.export import export_alpaca_eval

        if not (args.source and args.format and args.out):
            raise ValueError("export needs SOURCE --format alpaca_eval --out FILE, or --merge CKPT OUT")
        out = export_alpaca_eval(args.source, args.out, generator=args.generator, which=args.which,
                                 prompts=args.prompts, max_new_tokens=args.max_new_tokens)
    print(f"selfsteer: wrote {out}")


@_tool
def _probe(args: argparse.Namespace) -> None:
    from selfsteer.config.schema import load_config
    from selfsteer.tools.probe import run_probe, table

    if args.prompts < 2:
        raise ValueError(f"--prompts {args.prompts}: need at least 2 prompts for a spread")
    cfg = load_config(args.config, list(args.overrides))
    report = run_probe(cfg, args.prompts, args.out, args.dimensions, args.seed, args.batch_size,
                       args.max_new_tokens, args.placement or cfg.principles.placement)
    print(table(report), end="")

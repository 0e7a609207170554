"""Command-line wiring of the recipe: `selfsteer principles | sso-data | train | dpo-data | pipeline |
convert-ultrafeedback | serve`. `selfsteer.cli.main` adds these with `add_subcommands`; each parser names
its handler (`set_defaults`); `python -m selfsteer.cli.recipe ...` builds a parser of these alone and runs
it through the same `cli.dispatch` (importing `cli.main` here would make an import cycle).

Phase commands take the same YAML schema and dotted `key=value` overrides as `selfsteer run`; keys
left unset get the recipe's values (`selfsteer.recipe.settings`). The model trained or sampled is
`model.policy`; `dpo-data` samples from `--generator`, the output of `train --algo sso`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import Callable

from selfsteer.cli.dispatch import dispatch


def add_subcommands(subparsers) -> None:
    """Add the recipe's subcommands to `selfsteer`'s subparsers (dest="command")."""

    def phase(name: str, help_text: str, inp: str, out: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--input", required=True, help=inp)
        p.add_argument("--output", required=True, help=out)
        _common(p)
        p.set_defaults(handler=_phase)
        return p

    phase("principles", "recipe phase 1: a good and a bad principle per prompt",
          'prompts file [{"prompt", "uuid"}] (.json, .jsonl or .parquet)', "principles JSON to write (resumable)")
    phase("sso-data", "recipe phase 2: y+, y-, y^o per prompt from model.policy",
          "principles file (phase 1 output)", "SSO data JSON to write (resumable)")
    train = phase("train", "recipe phases 3 and 5: train model.policy on an SSO or DPO data file",
                  "SSO data (--algo sso) or DPO data (--algo dpo) file", "directory for the trained HF model")
    train.add_argument("--algo", choices=("sso", "dpo"), required=True,
                       help="sso: the SSO loss (v2 by default) -> the generator; dpo: plain DPO (beta 0.1)")
    dpo = phase("dpo-data", "recipe phase 4: y+ and y- per prompt from the SSO generator",
                "principles file (phase 1 output)", "DPO data JSON to write (resumable)")
    dpo.add_argument("--generator", required=True, help="the SSO-trained model directory (train --algo sso output)")

    pipe = subparsers.add_parser("pipeline", help="all five recipe phases (the recipe's quick start)",
                                 description="principles -> sso-data -> train sso -> dpo-data -> train dpo")
    pipe.add_argument("--prompts", required=True, help='prompts file [{"prompt", "uuid"}]')
    pipe.add_argument("--output-dir", required=True,
                      help="gets principles.json, sso_data.json, generator/, dpo_data.json, final/")
    _common(pipe)
    pipe.set_defaults(handler=_pipeline)

    conv = subparsers.add_parser("convert-ultrafeedback", help="UltraFeedback-binarized parquet -> prompts JSON",
                                 description='parquet with "prompt" and "prompt_id" -> [{"prompt", "uuid"}]')
    conv.add_argument("parquet")
    conv.add_argument("output")
    conv.add_argument("--prompt-field", default="prompt")
    conv.add_argument("--id-field", default="prompt_id")
    conv.add_argument("--limit", type=int, help="keep only the first N distinct prompts")
    conv.add_argument("--log-level", default="INFO")
    conv.set_defaults(handler=_convert)

    srv = subparsers.add_parser("serve", help="serve a local HF model as an OpenAI-compatible chat API",
                                description="OpenAI-compatible /v1/chat/completions over the HF backend")
    srv.add_argument("--model", required=True, help="local HF model directory")
    srv.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    srv.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    srv.add_argument("--served-model-name", help="the model id clients send (default: the directory name)")
    srv.add_argument("--api-key-env", help="require the key held by this environment variable")
    srv.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    srv.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    srv.add_argument("--max-batch-size", type=int, default=16)
    srv.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    srv.add_argument("--log-level", default="INFO")
    srv.set_defaults(handler=_serve)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.policy=/models/Qwen2-7B-Instruct")
    p.add_argument("--config", help="YAML config (same schema as `selfsteer run`), e.g. configs/recipe_tiny_cpu.yaml")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad input rows instead of stopping")
    p.add_argument("--log-level", default="INFO")


def _recipe(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A recipe handler: its logging, and its errors as one line (2: bad config or input, 1: endpoint failure)."""

    @functools.wraps(fn)
    def handler(args: argparse.Namespace) -> int:
        from selfsteer.config.schema import ConfigError
        from selfsteer.principles.endpoint import EndpointError
        from selfsteer.recipe.records import RecordError
        from selfsteer.recipe.training import TrainingError

        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return fn(args)
        except (ConfigError, RecordError, TrainingError, FileNotFoundError) as exc:
            print(f"selfsteer {args.command}: {_message(exc)}", file=sys.stderr)
            return 2
        except EndpointError as exc:
            print(f"selfsteer {args.command}: {_message(exc)}", file=sys.stderr)
            return 1

    return handler


def _message(exc: BaseException) -> str:
    """The error itself, not Ray's wrapper around an error raised inside an actor."""
    cause = getattr(exc, "cause", None)
    return str(cause if isinstance(cause, BaseException) else exc)


@_recipe
def _convert(args: argparse.Namespace) -> int:
    from selfsteer.recipe.convert import convert_ultrafeedback

    counts = convert_ultrafeedback(args.parquet, args.output, prompt_field=args.prompt_field,
                                   id_field=args.id_field, limit=args.limit)
    print(f"selfsteer: wrote {counts['written']} prompts to {args.output} "
          f"({counts['rows']} rows read, {counts['duplicates']} duplicate ids skipped)")
    return 0


@_recipe
def _serve(args: argparse.Namespace) -> int:
    from selfsteer.tools.serve import serve

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"selfsteer serve: --api-key-env {args.api_key_env}: that variable is not set", file=sys.stderr)
            return 2
    serve(args.model, host=args.host, port=args.port, served_name=args.served_model_name, api_key=api_key,
          device=args.device, dtype=args.dtype, max_batch_size=args.max_batch_size, torch_threads=args.threads,
          on_ready=lambda url: print(f"selfsteer serve: {url} (model {args.served_model_name or args.model})",
                                     flush=True))
    return 0


@_recipe
def _pipeline(args: argparse.Namespace) -> int:
    from selfsteer.recipe import phases
    from selfsteer.recipe.settings import recipe_config

    cfg = recipe_config(args.config, args.overrides, dpo=False)
    progress = _Bars()
    summary = phases.run_pipeline(cfg, recipe_config(args.config, args.overrides, dpo=True), args.prompts,
                                  args.output_dir, skip_bad=args.skip_bad, progress=progress)
    progress.close()
    print(f"selfsteer: pipeline finished; outputs in {args.output_dir} (final model: {args.output_dir}/final)")
    for phase, counts in summary.items():
        print(f"  {phase}: " + " ".join(f"{k}={v:g}" for k, v in counts.items()))
    return 0


@_recipe
def _phase(args: argparse.Namespace) -> int:
    """principles, sso-data, dpo-data or train: one phase on a workbench of actors."""
    from selfsteer.actors.inputs import resolve_model
    from selfsteer.recipe import phases
    from selfsteer.recipe.settings import recipe_config
    from selfsteer.recipe.workbench import Workbench

    cfg = recipe_config(args.config, args.overrides, dpo=args.command == "train" and args.algo == "dpo")
    progress = _Bars()
    policy = resolve_model(cfg)
    bench = Workbench(cfg)
    try:
        if args.command == "principles":
            counts = phases.build_principles(bench, args.input, args.output, policy_path=policy,
                                             skip_bad=args.skip_bad, progress=progress)
        elif args.command == "sso-data":
            counts = phases.build_sso_data(bench, args.input, args.output, model_path=policy,
                                           skip_bad=args.skip_bad, progress=progress)
        elif args.command == "dpo-data":
            counts = phases.build_dpo_data(bench, args.input, args.output, model_path=args.generator,
                                           skip_bad=args.skip_bad, progress=progress)
        else:
            from selfsteer.recipe.training import train_on_file

            counts = train_on_file(bench, cfg, args.input, args.output, algo=args.algo, model_path=policy,
                                   skip_bad=args.skip_bad, progress=progress)
    finally:
        progress.close()
        bench.shutdown()
    print(f"selfsteer {args.command}: wrote {args.output}; " + " ".join(f"{k}={v:g}" for k, v in counts.items()))
    return 0


class _Bars:
    """One tqdm bar per phase, fed by the phases' (phase, done, total) progress calls."""

    def __init__(self):
        self.bars: dict = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        bar = self.bars.get(phase)
        if bar is None:
            bar = self.bars[phase] = tqdm(total=total, desc=phase, unit="rec" if "train" not in phase else "ex")
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def main(argv: list[str] | None = None) -> int:
    """`python -m selfsteer.cli.recipe ...`: the recipe's subcommands, as `selfsteer` parses and runs them."""
    parser = argparse.ArgumentParser(prog="selfsteer", description="The five-phase SSO recipe on Ray actors.")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())

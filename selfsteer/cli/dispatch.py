"""The one dispatch every entry uses: parse, hand the arguments to the subcommand's handler.

Each subparser names its handler with `set_defaults(handler=fn)`; a handler returns the exit
status (0 done, 2 bad input) and raises `UsageError` for arguments that do not go together.
"""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """Arguments that do not go together: reported as argparse does (usage line, exit 2)."""


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv` with `parser` and run the chosen subcommand's handler; its exit status.

    A subcommand that sets `more_overrides=True` takes `key=value` words left after its options
    (`run CONFIG --overwrite rounds=3`), which argparse leaves over; any other leftover is an error.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not getattr(args, "more_overrides", False) or any(w.startswith("-") or "=" not in w for w in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return args.handler(args)
    except UsageError as exc:
        parser.error(str(exc))

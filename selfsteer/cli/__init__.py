"""selfsteer.cli: the `selfsteer` command: one dispatch table for every subcommand."""

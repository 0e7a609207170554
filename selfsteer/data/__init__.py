"""Prompt loading (through `datasets`), the data cursor, chat formatting and round records."""

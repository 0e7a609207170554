"""Reading a local json/jsonl/parquet table with `datasets`, with errors that name the file and
where it stops being readable. Prompts (selfsteer.data.prompts) and the recipe's records
(selfsteer.recipe.records) share it, each raising its own error class."""

from __future__ import annotations

import json
from pathlib import Path

FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def read_table(path: Path, error: type[Exception], *, missing: str = "file not found", unit: str = "records"):
    """The file as a `datasets.Dataset`; `error(message)` for a missing, empty or unreadable file."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing}")
    builder = FORMATS.get(path.suffix.lower())
    if builder is None:
        raise error(f"{path}: unsupported extension {path.suffix!r}; use one of {sorted(FORMATS)}")
    if path.stat().st_size == 0:
        raise error(f"{path}: file is empty")
    if builder == "json":  # `datasets` reads bad UTF-8 into its table; it fails only when a row is read
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            rows_before = sum(1 for x in data[:exc.start].split(b"\n")[:-1] if x.strip())
            row = f" (row {rows_before})" if path.suffix.lower() == ".jsonl" else ""
            raise error(f"{path}: line {line}{row}: not UTF-8 text (byte {exc.start}: {exc.reason}); "
                        "save the file as UTF-8") from None
    # The error below names the file and line; datasets' own log of the same failure would only
    # repeat it (and goes to whatever stream stderr was at its first import).
    verbosity = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets wraps parse errors in several exception types
        problem = json_problem(path) if builder == "json" else None
        if problem:
            raise error(f"{path}: {problem}") from None
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise error(f"{path}: could not be read as {builder}: {exc}{cause}") from exc
    finally:
        datasets.utils.logging.set_verbosity(verbosity)
    if len(ds) == 0:
        raise error(f"{path}: contains no {unit}")
    return ds


def json_problem(path: Path) -> str | None:
    """Where a file `datasets` could not read stops being JSON (a JSON document or JSON Lines)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start})"
    if not text.strip():
        return "file is empty"
    if not text.lstrip().startswith(("[", "{")):
        return "not valid JSON (a JSON list, object or JSON Lines was expected)"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as whole:
        if text.lstrip().startswith("["):
            return f"line {whole.lineno}: not valid JSON ({whole.msg}, column {whole.colno})"
        for number, line in enumerate(text.splitlines(), 1):  # JSON Lines
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    return f"line {number}: not valid JSON ({exc.msg}, column {exc.colno})"
        return f"line {whole.lineno}: not valid JSON ({whole.msg}, column {whole.colno})"
    rows = doc if isinstance(doc, list) else [doc]
    if not rows:
        return "contains no records (an empty JSON list)"
    for row, item in enumerate(rows):
        if not isinstance(item, dict):
            return f"row {row}: not a JSON object, got {type(item).__name__}"
    return None

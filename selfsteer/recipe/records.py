"""The recipe's JSON records (docs/concepts/sso.md §8): builders in the exact field order, reading, validation.

Every file the recipe writes is one JSON list, indent 2, UTF-8 unescaped, no trailing newline: the
bytes of the recipe's own `json.dump(records, f, ensure_ascii=False, indent=2)`. Inputs are read
through `datasets` (.json list or lines, .jsonl, .parquet) and checked row by row; a bad row is an
error naming file, row and field, or, with `skip_bad`, a counted and logged skip.

    T(v) = [{"value": prompt, "from": "human"}, {"value": v, "from": "gpt"}]
    prompts     {"prompt", "uuid"}
    principles  {"prompt", "uuid", "principles": [{"good_principle", "bad_principle"}]}
    sso         {"prompt", "uuid", "p_system", "n_system", "system": "", "chosen": T(y+), "rejected": T(y-),
                 "raw": T(y^o), "history": []}
    dpo         {"prompt", "chosen": T(y+), "rejected": T(y-), "conversations": T(y+), "prompt_id"}

The recipe's rule for ids holds for every kind: if the first record has no id, every record gets
its row index (an integer). Ids are kept as they are (string or integer) and compared as strings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from selfsteer.data.tables import FORMATS, json_problem, read_table

logger = logging.getLogger(__name__)

# kind -> the field naming a record (what resume compares)
ID_FIELDS = {"prompts": "uuid", "principles": "uuid", "sso": "uuid", "dpo": "prompt_id"}


class RecordError(ValueError):
    """A records file is unusable; the message names the file, the row and the field."""


class _Bad(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(field, problem)
        self.field, self.problem = field, problem


# --- builders: the recipe's field order ----------------------------------------------------

def conversation(prompt: str, reply: str) -> list[dict]:
    """T(v): the single-turn conversation the recipe stores, keys in the order value, from."""
    return [{"value": prompt, "from": "human"}, {"value": reply, "from": "gpt"}]


def principles_record(prompt: str, uid: Any, good: str, bad: str) -> dict:
    return {"prompt": prompt, "uuid": uid, "principles": [{"good_principle": good, "bad_principle": bad}]}


def sso_record(prompt: str, uid: Any, p_system: str, n_system: str, chosen: str, rejected: str, raw: str) -> dict:
    return {"prompt": prompt, "uuid": uid, "p_system": p_system, "n_system": n_system, "system": "",
            "chosen": conversation(prompt, chosen), "rejected": conversation(prompt, rejected),
            "raw": conversation(prompt, raw), "history": []}


def dpo_record(prompt: str, chosen: str, rejected: str, prompt_id: Any) -> dict:
    return {"prompt": prompt, "chosen": conversation(prompt, chosen), "rejected": conversation(prompt, rejected),
            "conversations": conversation(prompt, chosen), "prompt_id": prompt_id}


def dumps_records(records: list[dict]) -> str:
    return json.dumps(records, ensure_ascii=False, indent=2)


def write_records(path: str | Path, records: list[dict]) -> Path:
    """Write `records` as the recipe's JSON list, atomically: the old file stays until the new one is whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from selfsteer.utils.io import write_text

    write_text(path, dumps_records(records))
    return path


# --- field checks ------------------------------------------------------------------------------

def _text(value: Any, field: str, *, allow_empty: bool = False) -> str:
    if value is None:
        raise _Bad(field, "is missing")
    if not isinstance(value, str):
        raise _Bad(field, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise _Bad(field, "is empty")
    return value


def _id(value: Any, field: str) -> str | int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _Bad(field, "is missing or empty")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(field, f"must be a string or an integer, got {type(value).__name__}")
    return value


def _reply(value: Any, field: str) -> str:
    """The gpt turn of a T(v) conversation (the human turn repeats the prompt field)."""
    shape = 'must be [{"value": ..., "from": "human"}, {"value": ..., "from": "gpt"}]'
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(t, dict) for t in value):
        raise _Bad(field, f"{shape}, got {type(value).__name__}"
                   + (f" of length {len(value)}" if isinstance(value, list) else ""))
    for turn, role in zip(value, ("human", "gpt")):
        if turn.get("from") != role:
            raise _Bad(field, f"{shape}; found from={turn.get('from')!r} where {role!r} belongs")
        _text(turn.get("value"), field, allow_empty=True)
    return value[1]["value"]


def _principles(value: Any, field: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _Bad(field, f'must be a non-empty list of {{"good_principle", "bad_principle"}}, got {value!r:.60}')
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _Bad(f"{field}[{i}]", f"must be an object, got {type(item).__name__}")
        out.append({name: _text(item.get(name), f"{field}[{i}].{name}", allow_empty=True)
                    for name in ("good_principle", "bad_principle")})
    return out


# kind -> (field -> check) in output order; the id field is handled separately.
_Check = Callable[[Any, str], Any]
SCHEMAS: dict[str, dict[str, _Check]] = {
    "prompts": {"prompt": _text},
    "principles": {"prompt": _text, "principles": _principles},
    "sso": {"prompt": _text, "p_system": _text, "n_system": _text, "chosen": _reply, "rejected": _reply, "raw": _reply},
    "dpo": {"prompt": _text, "chosen": _reply, "rejected": _reply},
}


@dataclass
class Loaded:
    """Validated rows, each {field: value, <id field>: id, "row": source row}, and what was skipped."""

    records: list[dict]
    skipped: int
    path: Path
    id_field: str


def read_records(path: str | Path, kind: str, *, skip_bad: bool = False) -> Loaded:
    """Read and validate a recipe file of `kind` (prompts | principles | sso | dpo).

    Args:
        path: a local .json (list or lines), .jsonl or .parquet file.
        kind: which record format to expect (see the module docstring).
        skip_bad: skip rows with a missing, empty or mistyped field or a duplicate id, counting them;
            without it the first such row is an error. A file that cannot be read is always an error.

    Raises:
        RecordError: the file is missing, empty, not JSON/parquet, lacks a required column, holds no
            usable row, or (without `skip_bad`) has a bad row; the message names file, row and field.
    """
    if kind not in SCHEMAS:
        raise ValueError(f"unknown record kind {kind!r}; valid: {sorted(SCHEMAS)}")
    path = Path(path)
    schema, id_field = SCHEMAS[kind], ID_FIELDS[kind]
    ds = _load_dataset(path)
    missing = [f for f in schema if f not in ds.column_names]
    if missing:
        raise RecordError(f"{path}: row 0: missing field {missing[0]!r} (columns: {ds.column_names}); "
                          f"is this a {kind} file?")
    has_ids = id_field in ds.column_names and ds[0][id_field] is not None
    ds = ds.select_columns(list(schema) + ([id_field] if has_ids else []))
    records, seen, skipped = [], {}, 0
    for row, example in enumerate(_rows(ds, path)):
        try:
            record = {name: check(example[name], name) for name, check in schema.items()}
            uid = _id(example[id_field], id_field) if has_ids else row
            if str(uid) in seen:
                raise _Bad(id_field, f"duplicates row {seen[str(uid)]} ({uid!r})")
        except _Bad as bad:
            message = f"{path}: row {row}: field {bad.field!r} {bad.problem}"
            if not skip_bad:
                raise RecordError(f"{message} (rerun with --skip-bad to skip such rows)") from None
            skipped += 1
            if skipped <= 10:
                logger.warning("skipping %s", message)
            continue
        seen[str(uid)] = row
        records.append({**record, id_field: uid, "row": row})
    if skipped:
        logger.warning("%s: skipped %d bad row(s) of %d", path, skipped, len(ds))
    if not records:
        raise RecordError(f"{path}: no usable rows ({skipped} skipped)")
    return Loaded(records, skipped, path, id_field)


def _rows(ds, path: Path):
    """The rows as dicts; a row arrow cannot decode (bytes that are not UTF-8) is a RecordError."""
    row = 0
    iterator = iter(ds)
    while True:
        try:
            example = next(iterator)
        except StopIteration:
            return
        except (UnicodeDecodeError, ValueError) as exc:
            problem = json_problem(path) if FORMATS.get(path.suffix.lower()) == "json" else None
            raise RecordError(f"{path}: {problem or f'row {row}: could not be decoded ({exc})'}") from None
        yield example
        row += 1


def _load_dataset(path: Path):
    return read_table(path, RecordError)



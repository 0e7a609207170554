"""UltraFeedback-binarized-style parquet -> the recipe's prompts file `[{"prompt", "uuid"}]`.

The recipe trains on the prompts of HuggingFaceH4/ultrafeedback_binarized `train_prefs` (columns
`prompt`, `prompt_id`, `chosen`, `rejected`, `messages`, `score_*`). Only the prompt is kept, and
its `prompt_id` becomes the record's `uuid`, so every later phase can be traced back to the row
(the recipe's own converter draws fresh uuid4s instead). A prompt id seen before is skipped and counted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from selfsteer.recipe.records import RecordError, write_records

logger = logging.getLogger(__name__)


def convert_ultrafeedback(parquet_path: str | Path, output_path: str | Path, *, prompt_field: str = "prompt",
                          id_field: str = "prompt_id", limit: Optional[int] = None) -> dict[str, int]:
    """Write `{"prompt": <prompt_field>, "uuid": <id_field>}` per row of a parquet file.

    Args:
        parquet_path: a local .parquet file (e.g. train_prefs-00000-of-00001.parquet).
        output_path: the recipe's prompts JSON list, written atomically.
        prompt_field, id_field: the source columns.
        limit: keep only the first `limit` distinct prompts (e.g. a 32-prompt smoke test).

    Returns:
        counts: `rows` read, `written`, `duplicates` skipped.

    Raises:
        RecordError: not a parquet file, a missing column, or a row whose prompt or id is empty or not
            a string; the message names file, row and field.
    """
    import datasets

    parquet_path = Path(parquet_path)
    if parquet_path.suffix.lower() != ".parquet":
        raise RecordError(f"{parquet_path}: expected a .parquet file")
    if not parquet_path.is_file():
        raise RecordError(f"{parquet_path}: file not found")
    try:
        ds = datasets.load_dataset("parquet", data_files=str(parquet_path), split="train")
    except Exception as exc:  # datasets wraps arrow errors in several exception types
        raise RecordError(f"{parquet_path}: could not be read as parquet: {exc}") from exc
    for field in (prompt_field, id_field):
        if field not in ds.column_names:
            raise RecordError(f"{parquet_path}: row 0: missing field {field!r} (columns: {ds.column_names})")
    ds = ds.select_columns([prompt_field, id_field])
    records, seen, duplicates = [], set(), 0
    for row, example in enumerate(ds):
        for field in (prompt_field, id_field):
            value = example[field]
            if not isinstance(value, str) or not value.strip():
                raise RecordError(f"{parquet_path}: row {row}: field {field!r} must be a non-empty string, got "
                                  f"{value!r:.60}")
        if example[id_field] in seen:
            duplicates += 1
            continue
        seen.add(example[id_field])
        records.append({"prompt": example[prompt_field], "uuid": example[id_field]})
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise RecordError(f"{parquet_path}: contains no rows")
    write_records(output_path, records)
    if duplicates:
        logger.warning("%s: skipped %d row(s) whose %s repeats an earlier row", parquet_path, duplicates, id_field)
    return {"rows": row + 1, "written": len(records), "duplicates": duplicates}

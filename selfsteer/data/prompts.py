"""Prompts from local json/jsonl/parquet files via `datasets`, validated row by row, and a cursor."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from selfsteer.data.tables import read_table


class PromptDataError(ValueError):
    """A prompts file is unusable; the message names the file, the row and the field."""


@dataclass(frozen=True)
class PromptRecord:
    uid: str
    index: int  # row in the source file
    prompt: str
    target: Optional[str] = None  # an SFT answer y* (Self-Contrast, SIPO), when the file has one


def load_prompts(path: str | Path, prompt_field: str = "prompt", id_field: str = "uuid",
                 target_field: Optional[str] = None) -> list[PromptRecord]:
    """Read and validate every row; ids default to the row index (docs/concepts/sso.md §8) when the file has none.

    `target_field` names a required non-empty string answer per row (SFT data), when the algorithm needs one.
    """
    path = Path(path)
    return records_from_table(read_prompt_table(path), path, prompt_field, id_field, target_field)


def read_prompt_table(path: str | Path):
    """The prompts file as a `datasets.Dataset` (PromptDataError naming the file when unreadable)."""
    return read_table(Path(path), PromptDataError, missing="prompts file not found", unit="rows")


def records_from_table(ds, path: Path, prompt_field: str = "prompt", id_field: str = "uuid",
                       target_field: Optional[str] = None) -> list[PromptRecord]:
    """`load_prompts` on a table already read (a caller that needs more of its columns reads it once)."""
    if prompt_field not in ds.column_names:
        raise PromptDataError(f"{path}: row 0: missing field {prompt_field!r} (columns: {ds.column_names})")
    if target_field and target_field not in ds.column_names:
        raise PromptDataError(f"{path}: row 0: missing target field {target_field!r} (columns: {ds.column_names})")
    # docs/concepts/sso.md §8: if the first record has no id, every record gets its row index.
    has_ids = id_field in ds.column_names and ds[0][id_field] not in (None, "")
    records, seen = [], {}
    for row, example in enumerate(_rows(ds, path)):
        prompt = example[prompt_field]
        if not isinstance(prompt, str):
            raise PromptDataError(f"{path}: row {row}: field {prompt_field!r} must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise PromptDataError(f"{path}: row {row}: field {prompt_field!r} is empty")
        uid = example[id_field] if has_ids else row
        if uid is None or (isinstance(uid, str) and not uid.strip()):
            raise PromptDataError(f"{path}: row {row}: field {id_field!r} is empty")
        uid = str(uid)
        if uid in seen:
            raise PromptDataError(f"{path}: row {row}: field {id_field!r} duplicates row {seen[uid]} ({uid!r})")
        seen[uid] = row
        target = example[target_field] if target_field else None
        if target_field and (not isinstance(target, str) or not target.strip()):
            raise PromptDataError(f"{path}: row {row}: field {target_field!r} must be a non-empty string, got {target!r:.60}")
        records.append(PromptRecord(uid=uid, index=row, prompt=prompt, target=target))
    return records


def _rows(ds, path: Path):
    """The table's rows; a string that is not UTF-8 (parquet does not check) names its row."""
    for row in range(len(ds)):
        try:
            yield ds[row]
        except UnicodeDecodeError as exc:
            raise PromptDataError(f"{path}: row {row}: not UTF-8 text (byte {exc.start} of a field: {exc.reason})") from None


class PromptCursor:
    """Walks the prompts in per-epoch shuffled order; its state is two integers, saved per round."""

    def __init__(self, records: list[PromptRecord], seed: int, shuffle: bool = True):
        if not records:
            raise PromptDataError("no prompts to iterate over")
        self.records, self.seed, self.shuffle = records, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.records)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, size: int) -> list[PromptRecord]:
        """`size` distinct prompts. A batch that runs into the next epoch passes over the prompts it
        already holds (they come round again in the epoch after)."""
        if size > len(self.records):
            raise PromptDataError(f"a batch of {size} prompts needs at least {size} distinct prompts; there are "
                                  f"{len(self.records)}")
        batch, taken = [], set()
        while len(batch) < size:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            index = self._order[self.position]
            self.position += 1
            if index not in taken:
                taken.add(index)
                batch.append(self.records[index])
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)

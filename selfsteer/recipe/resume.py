"""Resumable phase output: records are appended to a side file as they finish, the JSON list at the end.

    <output>.partial.jsonl   one record per line, flushed and fsynced per record, while the phase runs
    <output>                 the recipe's JSON list, written atomically once the phase finishes

A phase killed at any point keeps every record it finished: on the next run the ids already in
<output> or in the side file are skipped, and the finished file holds old + new records
(docs/concepts/sso.md §8, on resuming). Neither file is rewritten before the new one is complete.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from selfsteer.recipe.records import RecordError, write_records

logger = logging.getLogger(__name__)


class PhaseOutput:
    """The output of one phase. Use as a context manager; `finish()` writes the JSON list."""

    def __init__(self, path: str | Path, id_field: str):
        self.path, self.id_field = Path(path), id_field
        self.side = self.path.with_name(self.path.name + ".partial.jsonl")
        self.records: list[dict] = self._read_final()
        self.done: set[str] = {str(r[id_field]) for r in self.records}
        self.resumed_from_side = 0
        for record in self._read_side():
            if str(record[id_field]) not in self.done:
                self.records.append(record)
                self.done.add(str(record[id_field]))
                self.resumed_from_side += 1
        self.new = 0
        self._fh = None

    def _read_final(self) -> list[dict]:
        if not self.path.is_file():
            return []
        try:
            records = json.loads(self.path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecordError(f"{self.path}: the existing output is not a JSON list ({exc}); move it away to "
                              "start over, or point --output elsewhere") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) and self.id_field in r for r in records):
            raise RecordError(f"{self.path}: the existing output is not a list of records with {self.id_field!r}; "
                              "move it away to start over")
        return records

    def _read_side(self) -> list[dict]:
        if not self.side.is_file():
            return []
        lines = self.side.read_text(encoding="utf-8").split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # only the last line can be cut short by a kill mid-write
                    logger.warning("%s: dropping a half-written last line", self.side)
                    break
                raise RecordError(f"{self.side}: line {number}: not valid JSON; the side file is damaged") from None
            if not isinstance(record, dict) or self.id_field not in record:
                raise RecordError(f"{self.side}: line {number}: not a record with {self.id_field!r}")
            records.append(record)
        return records

    def __enter__(self) -> PhaseOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, record: dict) -> None:
        """Add a finished record; it is on disk when this returns."""
        if self._fh is None:
            self._trim_side()
            self._fh = open(self.side, "a", encoding="utf-8")
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.records.append(record)
        self.done.add(str(record[self.id_field]))
        self.new += 1

    def _trim_side(self) -> None:
        """Cut a half-written last line (a kill mid-write) so appends start on a fresh line."""
        if not self.side.is_file():
            return
        with open(self.side, "rb+") as fh:
            data = fh.read()
            cut = data.rfind(b"\n") + 1
            if cut == len(data):
                return
            try:
                json.loads(data[cut:])
                fh.write(b"\n")  # a whole record that only lacks its newline
            except ValueError:
                fh.truncate(cut)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finish(self) -> Path:
        """Write old + new records as the JSON list, then drop the side file."""
        self.close()
        if self.new or self.resumed_from_side or not self.path.is_file():
            write_records(self.path, self.records)
        if self.side.is_file():
            self.side.unlink()
        return self.path

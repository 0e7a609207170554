"""A periodic progress line for long phases inside actors (principles, reference scoring, training).

A tqdm bar redrawn through Ray's log forwarding turns into a wall of lines, so actors print one
plain line every `interval_s` seconds instead (forwarded to the driver with the actor's name), and a
final line when the phase took longer than that. Phases shorter than `interval_s` stay silent.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional

DEFAULT_INTERVAL_S = 15.0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ProgressLine:
    def __init__(self, phase: str, total: Optional[int], unit: str, *, interval_s: float = DEFAULT_INTERVAL_S,
                 emit: Callable[[str], None] = _stderr, clock: Callable[[], float] = time.monotonic):
        self.phase, self.total, self.unit = phase, total, unit
        self.interval_s, self.emit, self.clock = interval_s, emit, clock
        self.done, self.start = 0, clock()
        self.last = self.start
        self.lines = 0

    def _line(self, final: bool) -> str:
        elapsed = self.clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0 and not final:
            eta = f", ~{max(self.total - self.done, 0) / rate:.0f} s left"
        return f"{self.phase}: {self.done}{of} {self.unit} in {elapsed:.0f} s ({rate:.2f}/s{eta}){' done' if final else ''}"

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.interval_s and not (self.total and self.done >= self.total):  # close() reports the end
            self.last = now
            self.lines += 1
            self.emit(self._line(final=False))

    def close(self) -> None:
        """The final line, only when the phase ran long enough to have shown progress."""
        if self.clock() - self.start >= self.interval_s:
            self.lines += 1
            self.emit(self._line(final=True))

"""Where a run keeps what: the one place that spells the run directory's paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


ROUND_GROUPS = ("rounds", "checkpoints", "checkpoints_b")  # the folders that hold one round_NNNN per round


@dataclass(frozen=True)
class RunDir:
    """A run's output directory.

    rounds/round_NNNN/   what round N produced (records, skipped.jsonl, metrics.json)
    checkpoints/round_NNNN/, checkpoints_b/round_NNNN/   HF checkpoints (SIPO's policy B in _b)
    """

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @staticmethod
    def tag(round_index: int) -> str:
        return f"round_{round_index:04d}"

    def round(self, round_index: int, create: bool = False) -> Path:
        path = self.root / "rounds" / self.tag(round_index)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def checkpoint(self, round_index: int, group: str = "checkpoints") -> Path:
        return self.root / group / self.tag(round_index)

    def numbered(self, group: str = "checkpoints") -> list[tuple[int, Path]]:
        """(round, directory) for each round_NNNN in `group` (one of ROUND_GROUPS), in round order;
        other names are not rounds and are left out."""
        found = []
        for path in (self.root / group).glob("round_*"):
            suffix = path.name[len("round_"):]
            if suffix.isdigit():
                found.append((int(suffix), path))
        return sorted(found)

"""Round metrics: round_NNNN/metrics.json, a metrics.jsonl line (fsynced every round), TensorBoard, optionally W&B."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Iterator, Optional

from selfsteer.utils.io import write_json
from selfsteer.utils.run_dir import RunDir


class PhaseTimer:
    """Seconds per named phase of a round, reported as `time/<phase>`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{phase}"] = self.seconds.get(f"time/{phase}", 0.0) + time.perf_counter() - start


class MetricsWriter:
    """One round's metrics to `rounds/round_NNNN/metrics.json`, a `metrics.jsonl` line (both fsynced),
    TensorBoard (flushed) and W&B. `purge_from` (a resumed run's first round) hides TensorBoard
    events a killed run wrote for rounds it is about to re-run."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, wandb_project: Optional[str] = None, config: dict | None = None,
                 purge_from: Optional[int] = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge_from)
        self.wandb = None
        if wandb_project:
            import wandb  # optional dependency: pip install wandb

            self.wandb = wandb.init(project=wandb_project, config=config or {}, dir=str(run_dir))

    def write(self, round_index: int, metrics: dict[str, float]) -> None:
        clean = _numbers(metrics)
        round_dir = RunDir(self.run_dir).round(round_index)
        if round_dir.is_dir():
            write_json(round_dir / "metrics.json", _json_safe(clean))
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"round": round_index, **_json_safe(clean)}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.scalars(round_index, clean)

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        """TensorBoard/W&B only: a round's (from `write`) or a step that is not a round (round 0's evaluation)."""
        clean = _numbers(metrics)
        if clean:
            self._tensorboard(step, clean)
            if self.wandb is not None:
                self.wandb.log(clean, step=step)

    def restore(self, rounds: dict[int, dict]) -> None:
        """TensorBoard events of rounds whose metrics.jsonl line was restored on resume."""
        for r in sorted(rounds):
            self._tensorboard(r, _numbers(rounds[r]))

    def _tensorboard(self, round_index: int, clean: dict[str, float]) -> None:
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, round_index)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _json_safe(clean: dict[str, float]) -> dict:
    return {k: (v if math.isfinite(v) else None) for k, v in clean.items()}


def weighted_mean(results: list[dict], key: str = "metrics", weight: str = "examples") -> dict[str, float]:
    """Example-weighted mean of per-rank metric dicts."""
    total = sum(r[weight] for r in results)
    out: dict[str, float] = {}
    for r in results:
        for k, v in r[key].items():
            out[k] = out.get(k, 0.0) + v * r[weight] / max(total, 1)
    return out


class SignalWatch:
    """Counts consecutive rounds a watched metric is out of bounds (a collapsing preference signal)."""

    def __init__(self, cfg):
        self.cfg, self.streak = cfg, 0

    def update(self, metrics: dict[str, float]) -> dict[str, float]:
        """Returns `signal/alert` (1 once the streak reaches `patience`) and the streak, for the metrics."""
        value = metrics.get(self.cfg.metric)
        bad = value is not None and ((self.cfg.max_value is not None and value > self.cfg.max_value)
                                     or (self.cfg.min_value is not None and value < self.cfg.min_value))
        self.streak = self.streak + 1 if bad else 0
        return {"signal/alert": float(self.streak >= self.cfg.patience), "signal/alert_streak": float(self.streak)}

    @property
    def alerting(self) -> bool:
        return self.streak >= self.cfg.patience


STEER_PREFIX = "signal/steer_gap/"


class SteerWatch:
    """Warns when the principles do not steer the policy: SSO's pairs then carry no preference.

    Reads `signal/steer_gap/<dimension>` (the round's A(y+|x+) - A(y+|x-) per dimension, from the
    reference's scores: the sampling policy's own in round 1) and `signal/gap_chosen` (the policy's,
    from the trainer), against `diagnostics.GAP_STEERS` - the threshold `selfsteer probe` uses. It
    fires after the first round this process runs, and again whenever the policy's gap falls below
    the threshold or a dimension newly falls below it.
    """

    def __init__(self):
        self.first, self.below, self.warned = True, False, set()

    def update(self, round_index: int, metrics: dict[str, float]) -> tuple[dict[str, float], str | None]:
        """(metrics to log, the warning text or None)."""
        from selfsteer.algorithms.diagnostics import GAP_STEERS

        dims = {k[len(STEER_PREFIX):]: v for k, v in metrics.items() if k.startswith(STEER_PREFIX)}
        weak = {name: v for name, v in dims.items() if v < GAP_STEERS}
        gap = metrics.get("signal/gap_chosen")
        below = gap is not None and gap < GAP_STEERS
        fire = (bool(weak) and (self.first or not set(weak) <= self.warned)) or (below and not self.below)
        self.first, self.below = False, below
        self.warned |= set(weak)
        out = {"signal/unsteered_dimensions": float(len(weak)), "signal/steer_alert": float(fire)}
        if dims:
            out["signal/steer_gap_min"] = min(dims.values())
        if not fire:
            return out, None
        named = ", ".join(f"{n} ({v:+.3f})" for n, v in sorted(weak.items(), key=lambda kv: kv[1])) or "(none on the reference's scores)"
        policy = f"; the policy's own gap signal/gap_chosen is {gap:+.3f}" if gap is not None else ""
        text = (f"round {round_index}: the principles do not steer the policy: steering gap below {GAP_STEERS} "
                f"nats/token for {len(weak)} of {len(dims)} dimension(s): {named}{policy}. Pairs sampled under them "
                "carry little preference, so SSO has little to learn. Measure which principles steer with "
                "`selfsteer probe CONFIG` (docs/guide/probe.md) and rewrite or drop the others.")
        return out, text

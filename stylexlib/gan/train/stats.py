"""Training statistics: the losses stay on the device until a log tick, which reads them with one host sync (and one
all-reduce across ranks), checks them for NaN/Inf and appends their means to ``stats.jsonl``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from stylexlib.core.distributed import DistInfo, mean_across_ranks
from stylexlib.core.io import atomic_write
from stylexlib.gan.checkpoint import STATS_FILE, read_stats


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the loss, the step and the checkpoint kept."""


def finite_values(steps: list[tuple[int, dict[str, Tensor]]], dist: DistInfo, kept: Callable[[], str]
                  ) -> list[dict[str, float]]:
    """Each step's losses as floats, averaged over ranks (one sync for all); raises :class:`TrainingDiverged` at the
    first NaN or Inf (``steps``: (the step's number, its losses); ``kept``: which checkpoint survives)."""
    flat = [value.detach().float().reshape(()) for _, losses in steps for value in losses.values()]
    if not flat:
        return [{} for _ in steps]
    numbers, values = iter(mean_across_ranks(torch.stack(flat), dist).tolist()), []
    for step, losses in steps:
        values.append({name: next(numbers) for name in losses})
        for name, value in values[-1].items():
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"StylEx training diverged: loss '{name}' is {value} at step {step}; {kept()}. Lower the learning "
                    "rates (stylex.optim.lr_g, lr_d, lr_e), raise stylex.regularise.r1_gamma, or use "
                    "stylex.runtime.precision=fp32.")
    return values


class LossWindow:
    """The losses of the steps since the last log tick, on the device until :meth:`read`."""

    def __init__(self, dist: DistInfo, kept: Callable[[], str]) -> None:
        self.dist, self.kept = dist, kept
        self.pending: list[tuple[int, dict[str, Tensor]]] = []
        self.read_values: dict[str, list[float]] = {}

    def add(self, step: int, losses: dict[str, Tensor]) -> None:
        self.pending.append((step, losses))

    def check(self) -> None:
        """Read the pending losses (one sync); raises :class:`TrainingDiverged` on a NaN or Inf."""
        for values in finite_values(self.pending, self.dist, self.kept):
            for name, value in values.items():
                self.read_values.setdefault(name, []).append(value)
        self.pending = []

    def means(self) -> dict[str, float]:
        """The mean of every loss over the window (checked), and a fresh window."""
        self.check()
        means = {name: sum(values) / len(values) for name, values in self.read_values.items()}
        self.read_values = {}
        return means

    def __bool__(self) -> bool:
        return bool(self.pending or self.read_values)


class StatsFile:
    """``stats.jsonl`` of a run folder, written by the main rank (nothing without a folder)."""

    def __init__(self, out_dir: Path | None, is_main: bool) -> None:
        self.path = out_dir / STATS_FILE if out_dir is not None and is_main else None

    def append(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as stats:
                stats.write(json.dumps(record) + "\n")

    def trim(self, step: int) -> None:
        """Drop the lines past ``step`` (left by an interrupted session)."""
        if self.path is None or not self.path.exists():
            return
        kept = [record for record in read_stats(self.path.parent) if record["step"] <= step]
        text = "".join(json.dumps(record) + "\n" for record in kept)
        atomic_write(self.path, lambda path: path.write_text(text))

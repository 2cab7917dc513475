"""How long StylEx training takes at a measured speed: the line training announces once its first steps are timed, and
the StylEx line of ``stylex run --plan``."""
from __future__ import annotations

import math
import time
from datetime import datetime, timedelta

from stylexlib.core.progress import announce

ESTIMATE_STEPS = 20  # steps timed (after a phase's first step) before the estimate is announced ...
ESTIMATE_SECONDS = 30.0  # ... or this long, whichever comes first (at least MIN_TIMED_STEPS steps)
MIN_TIMED_STEPS = 2


def training_time(step: int, total: int, seconds_per_step: float, limit_seconds: float | None = None,
                  warmup: tuple[int, float] = (0, 0.0)) -> tuple[int, float]:
    """(the step training stops at, its seconds from ``step``) at ``seconds_per_step``, within ``limit_seconds``;
    ``warmup`` = (the step the warm-up ends at, its seconds per step) for the steps before that."""
    budget = limit_seconds if limit_seconds is not None else math.inf
    spent = 0.0
    for end, pace in ((min(warmup[0], total), warmup[1]), (total, seconds_per_step)):
        if step >= end:
            continue
        need = (end - step) * pace
        if spent + need > budget:
            return step + int((budget - spent) / max(pace, 1e-12)), budget
        spent, step = spent + need, end
    return step, spent


def duration(seconds: float) -> str:
    """0.4 s, 12 s, 3.4 min, 2.1 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def pace_message(seconds_per_step: float, step: int, total: int, limit_seconds: float | None, elapsed: float,
                 now: datetime, warmup_until: int | None = None) -> str:
    """One line: how many steps fit in the time limit at this speed, and when training ends (``now`` + what is left).
    ``warmup_until``: the speed was timed in the warm-up, which ends at that step (later steps are slower)."""
    left = None if limit_seconds is None else max(limit_seconds - elapsed, 0.0)
    end_step, seconds = training_time(step, total, seconds_per_step, left)
    speed = f"{seconds_per_step:.3g} s/step"
    if end_step < total:
        text = f"about {end_step} of {total} steps fit in the {limit_seconds / 60:g}-minute limit ({speed})"
    else:
        within = f", within the {limit_seconds / 60:g}-minute limit" if limit_seconds is not None else ""
        text = f"{total - step} steps to go take about {duration(seconds)} ({speed}{within})"
    ends = now + timedelta(seconds=seconds + 30)  # to the nearest minute
    text += f"; training ends at ~{ends:%H:%M}"
    if warmup_until is not None:
        text += (f" (timed in the reconstruction warm-up, without D: the steps after step {warmup_until} are slower; "
                 "estimated again then)")
    return f"[stylex] StylEx: {text}"


class PaceAnnouncer:
    """Announces :func:`pace_message` once per phase (the warm-up, then the full steps) when its first steps are
    timed: after ``ESTIMATE_STEPS`` steps or ``ESTIMATE_SECONDS``, not counting the phase's first step (allocations,
    autotuning, compilation)."""

    def __init__(self, total: int, limit_seconds: float | None, warmup_steps: int, enabled: bool = True,
                 clock=time.perf_counter) -> None:
        self.total, self.limit, self.warmup_steps, self.enabled, self.clock = total, limit_seconds, warmup_steps, \
            enabled, clock
        self.started = clock()
        self.mark: tuple[int, float, bool] | None = None  # (step, time, warm-up?) the timing counts from
        self.said: set[bool] = set()

    def step_done(self, step: int, warming_up: bool) -> str | None:
        """Call after each step (``step``: steps done; ``warming_up``: that step was a warm-up step); returns the line
        when it announced one."""
        if not self.enabled or warming_up in self.said:
            return None
        now = self.clock()
        if self.mark is None or self.mark[2] != warming_up:
            self.mark = (step, now, warming_up)
            return None
        steps, seconds = step - self.mark[0], now - self.mark[1]
        if steps < ESTIMATE_STEPS and (seconds < ESTIMATE_SECONDS or steps < MIN_TIMED_STEPS):
            return None
        self.said.add(warming_up)
        message = pace_message(seconds / steps, step, self.total, self.limit, now - self.started, datetime.now(),
                               self.warmup_steps if warming_up and self.warmup_steps < self.total else None)
        announce(message)
        return message

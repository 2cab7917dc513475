"""The training loop: steps until ``steps`` or the time limit (counted over every session), with the progress bar,
the log ticks, the callbacks on their schedules, and a checkpoint on Ctrl-C/SIGTERM."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylexlib.core.distributed import any_rank, any_ranks
from stylexlib.core.interrupt import Interrupted, stop_requests
from stylexlib.core.progress import tqdm
from stylexlib.gan.pace import PaceAnnouncer
from stylexlib.gan.train.stats import LossWindow, StatsFile

Trainer = Any  # a stylexlib.gan.train.trainer.StylexTrainer (not imported: the trainer imports this module)

log = logging.getLogger(__name__)
SHOWN_ON_BAR = ("d", "adv", "l1", "kl")


@dataclass
class TrainSummary:
    """What a call of :meth:`StylexTrainer.train` did."""

    steps: int  # completed steps in total (all sessions)
    session_steps: int
    train_seconds: float  # training wall time in total (all sessions)
    session_seconds: float
    images_per_second: float  # real images per second of training, all sessions and ranks together
    stopped_by_time_limit: bool
    checkpoint: Path | None


class TrainingLoop:
    """Runs a trainer's steps and calls its checkpoints, previews and collapse check on their schedules."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.stats = StatsFile(trainer.out_dir, trainer.dist.is_main)

    def run(self, steps: int | None = None, progress: bool = True) -> TrainSummary:
        """Train until ``steps`` (default ``cfg.schedule.steps``) or the time limit; see :meth:`StylexTrainer.train`."""
        t, schedule = self.trainer, self.trainer.cfg.schedule
        state, dist, device = t.state, t.dist, t.device
        total = steps if steps is not None else schedule.steps
        first_step, seconds_before, started = state.step, state.train_seconds, time.perf_counter()
        limit = schedule.time_limit_minutes * 60 if schedule.time_limit_minutes else math.inf  # all sessions together
        self.stats.trim(state.step)
        bar = tqdm(total=total, initial=state.step, desc="stylex", disable=not (progress and dist.is_main))
        pace = PaceAnnouncer(total, limit - seconds_before if schedule.time_limit_minutes else None,
                             schedule.warmup_steps, enabled=dist.is_main)  # "about N steps fit; ends at ~HH:MM"
        window, interrupted = LossWindow(dist, t.checkpoints.kept), False
        window_start = (state.step, time.perf_counter())
        stopped_by_time = state.step < total and any_rank(seconds_before >= limit, device, dist)  # spent already
        with contextlib.closing(bar), stop_requests("StylEx training") as stop:
            while state.step < total and not stopped_by_time:
                warming_up = t.warming_up
                window.add(state.step + 1, t.run_step())
                state.train_seconds = seconds_before + time.perf_counter() - started
                bar.update(1)
                pace.step_done(state.step, warming_up)
                if state.step % t.cfg.runtime.log_every == 0 or state.step == total:
                    shown = {k: f"{v:.3g}" for k, v in self._log(window, window_start).items() if k in SHOWN_ON_BAR}
                    bar.set_postfix({**shown, **({"COLLAPSE": t.collapse.flag} if t.collapse.flag else {})})
                    window_start = (state.step, time.perf_counter())
                stopped_by_time, interrupted = any_ranks([state.train_seconds > limit, stop.requested], device, dist)
                if stopped_by_time or interrupted or state.step == total:
                    break
                self._callbacks(window)
        if window:
            self._log(window, window_start)
        interrupted = interrupted or any_rank(stop.requested, device, dist)  # a signal after the last check
        if interrupted:  # Ctrl-C / SIGTERM: keep the finished step, then stop as an interrupt does
            t.save_checkpoint()
            raise Interrupted(f"StylEx training stopped by {stop.name or 'a signal on another rank'} after step "
                              f"{state.step}; checkpoint {t.checkpoint_file} (it resumes there)", stop.signum or 0)
        if state.step > first_step or t.checkpoints.step is None:
            if t.cfg.runtime.sample_every:
                t.save_previews()
            t.save_checkpoint()
        if stopped_by_time:
            log.warning("time limit of %.1f min (all sessions) reached after %d steps (of %d)",
                        schedule.time_limit_minutes, state.step, total)
        images = state.step * t.cfg.optim.batch_size * dist.world_size
        return TrainSummary(state.step, state.step - first_step, state.train_seconds, time.perf_counter() - started,
                            images / max(state.train_seconds, 1e-9), stopped_by_time, t.checkpoint_file)

    def _callbacks(self, window: LossWindow) -> None:
        """Previews, the collapse check and the checkpoint when due (after checking the losses of the steps so far)."""
        t, runtime, step = self.trainer, self.trainer.cfg.runtime, self.trainer.step
        due = [every and step % every == 0
               for every in (runtime.sample_every, runtime.collapse_every, runtime.checkpoint_every)]
        if any(due):
            window.check()  # nothing is saved from a diverged step
        if due[0]:
            t.save_previews()
        if due[1] and t.dist.is_main:
            self.stats.append({"step": step, **t.check_collapse()})
        if due[2]:
            t.save_checkpoint()

    def _log(self, window: LossWindow, window_start: tuple[int, float]) -> dict[str, float]:
        """Append the window's mean losses to stats.jsonl (main rank) and return them."""
        state, cfg, world = self.trainer.state, self.trainer.cfg, self.trainer.dist.world_size
        means = window.means()
        steps, seconds = state.step - window_start[0], time.perf_counter() - window_start[1]
        record = {"step": state.step, "images": state.step * cfg.optim.batch_size * world,
                  "seconds": round(state.train_seconds, 3),
                  "images_per_second": steps * cfg.optim.batch_size * world / max(seconds, 1e-9), **means}
        self.stats.append(record)
        log.debug("step %d: %s", state.step, record)
        return means

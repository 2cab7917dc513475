"""#39 item 11: how long training will take: the line StylEx training announces once its first steps are timed, and
`stylex run --plan`, which estimates every costly stage without running anything."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from stylexlib.classifier.model import build_classifier
from stylexlib.core.stylex_config import stylex_config
from stylexlib.data import ImageDataset
from stylexlib.gan import pace
from stylexlib.gan.losses import load_lpips
from stylexlib.gan.train import StylexTrainer
from stylexlib.pipeline.cli import main

NOON = datetime(2025, 3, 1, 12, 0)


def test_the_pace_message_says_how_many_steps_fit_and_when_training_ends() -> None:
    # 20 steps timed at 0.5 s/step, 10 s into a 60-minute limit: 3590 s left fit 7180 more steps
    assert pace.pace_message(0.5, 20, 10000, 3600, 10, NOON) == (
        "[stylex] StylEx: about 7200 of 10000 steps fit in the 60-minute limit (0.5 s/step); training ends at ~13:00")
    # the steps end first: all of them, and the end the steps give, not the limit's
    assert pace.pace_message(0.25, 20, 500, 3600, 10, NOON) == (
        "[stylex] StylEx: 480 steps to go take about 2.0 min (0.25 s/step, within the 60-minute limit); training "
        "ends at ~12:02")
    assert pace.pace_message(2.0, 0, 5400, None, 0, NOON).endswith("about 3.0 h (2 s/step); training ends at ~15:00")
    warm = pace.pace_message(0.1, 20, 9000, 1200, 3, NOON, warmup_until=2000)
    assert "timed in the reconstruction warm-up" in warm and "after step 2000 are slower" in warm
    # the plan's sum of a cheaper warm-up and the full steps, cut by the limit
    assert pace.training_time(0, 10000, 1.0, 600, warmup=(100, 0.5)) == (650, 600)
    assert pace.training_time(0, 300, 1.0, None, warmup=(100, 0.5)) == (300, 250.0)


def test_the_announcer_speaks_once_per_phase_after_the_first_steps_are_timed(monkeypatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(pace, "announce", said.append)
    now = [100.0]
    announcer = pace.PaceAnnouncer(total=1000, limit_seconds=600, warmup_steps=30, clock=lambda: now[0])
    for step in range(1, 80):
        now[0] += 5.0 if step == 1 else 0.5  # the first step is slow (allocations): not counted
        announcer.step_done(step, warming_up=step <= 30)
    assert len(said) == 2
    assert "(0.5 s/step" in said[0] and "warm-up" in said[0] and "after step 30 are slower" in said[0]
    assert "(0.5 s/step" in said[1] and "warm-up" not in said[1]
    slow = pace.PaceAnnouncer(total=1000, limit_seconds=None, warmup_steps=0, clock=lambda: now[0])
    for step in range(1, 5):  # slow steps: announced after ESTIMATE_SECONDS, before ESTIMATE_STEPS
        now[0] += 20.0
        slow.step_done(step, warming_up=False)
    assert len(said) == 3 and "(20 s/step)" in said[2]


def test_stylex_training_announces_its_pace(monkeypatch, capsys) -> None:
    monkeypatch.setattr(pace, "ESTIMATE_STEPS", 3)
    cfg = stylex_config(latent_dim=16, mapping_layers=2, channel_base=128, channel_max=16, batch_size=4, steps=6,
                       log_every=2, sample_every=0, checkpoint_every=0, device="cpu", time_limit_minutes=30)
    images = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ImageDataset(images, torch.arange(24) % 2, ["a", "b"], np.array(["train"] * 20 + ["val"] * 4))
    trainer = StylexTrainer(cfg, data, build_classifier(2, 16, 4).eval(), lpips_model=load_lpips("squeeze"))
    trainer.train(progress=False)
    out = capsys.readouterr().out
    assert out.count("[stylex] StylEx:") == 1 and "6 steps to go" not in out and "training ends at ~" in out


def test_plan_prints_the_estimate_per_stage_and_runs_nothing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--plan", "tiny", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "an estimate from a few timed steps" in out
    for stage in ("02 classifier: 1 epochs x", "03 StylEx: 4 steps (", "05 AttFind: 6 images x",
                  "these stages: ~"):
        assert stage in out, out
    assert list(Path(tmp_path).iterdir()) == []  # no run folder, no runs/


def test_plan_of_a_time_limited_config_says_how_many_steps_fit(monkeypatch) -> None:
    from stylexlib.core.config import load_config
    from stylexlib.pipeline import plan

    lines: list[str] = []
    cfg = load_config("tiny", ["stylex.schedule.steps=100000", "stylex.schedule.time_limit_minutes=1", "stylex.schedule.warmup_steps=10"])
    plan.plan(cfg, say=lines.append, timed_steps=1)
    stylex = next(line for line in lines if "03 StylEx" in line)
    assert "of 100000 steps fit in the 1-minute limit" in stylex and "in the 10-step warm-up" in stylex

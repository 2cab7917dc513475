"""Ctrl-C or SIGTERM during StylEx training checkpoints the finished step; a torn stats.jsonl line resumes."""
from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest
import torch
from test_train import TINY, all_state, classifier, data, lpips_model, make_trainer  # noqa: F401 (fixtures)

from stylexlib.core.interrupt import Interrupted
from stylexlib.gan import train
from stylexlib.gan.checkpoint import STATS_FILE, checkpoint_path, load_checkpoint, read_stats


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data, classifier, lpips_model) -> dict[str, torch.Tensor]:  # noqa: F811
    trainer = make_trainer(TINY, data, classifier, lpips_model, tmp_path_factory.mktemp("straight"))
    trainer.train(progress=False)
    return all_state(trainer)


def _raise_interrupt(signum, frame):  # stands in for "the process dies" so the test process survives today's code
    raise KeyboardInterrupt


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_finishes_the_step_checkpoints_it_and_resumes_there(
        tmp_path: Path, data, classifier, lpips_model, straight, monkeypatch, signum: int) -> None:  # noqa: F811
    real_step = train.StylexTrainer.run_step

    def signal_during_step_4(self):
        if self.step == 3:  # after the scheduled checkpoint at step 3 (checkpoint_every=3)
            os.kill(os.getpid(), signum)
        return real_step(self)

    monkeypatch.setattr(train.StylexTrainer, "run_step", signal_during_step_4)
    previous = signal.signal(signum, _raise_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            make_trainer(TINY, data, classifier, lpips_model, tmp_path).train(progress=False)
        assert signal.getsignal(signum) is _raise_interrupt  # the trainer's handler is gone again
    finally:
        signal.signal(signum, previous)
    assert load_checkpoint(checkpoint_path(tmp_path))["step"] == 4  # step 4 finished and saved, not lost
    assert isinstance(caught.value, Interrupted) and caught.value.signum == signum

    monkeypatch.setattr(train.StylexTrainer, "run_step", real_step)
    resumed = make_trainer(TINY, data, classifier, lpips_model, tmp_path)
    assert resumed.resume() and resumed.step == 4
    summary = resumed.train(progress=False)
    assert summary.steps == 6 and summary.session_steps == 2
    actual = all_state(resumed)
    for name in straight:  # the same trajectory as a run never interrupted
        torch.testing.assert_close(actual[name], straight[name], rtol=0, atol=1e-6, msg=f"{name} differs")
    assert [r["step"] for r in read_stats(tmp_path)] == [2, 4, 6]


def test_a_torn_last_stats_line_is_dropped_and_the_run_resumes(
        tmp_path: Path, data, classifier, lpips_model, caplog) -> None:  # noqa: F811
    make_trainer(TINY, data, classifier, lpips_model, tmp_path).train(steps=3, progress=False)
    with open(tmp_path / STATS_FILE, "a") as stats:
        stats.write('{"step": 4, "images": 16, "d": 0.6')  # a process killed while writing the line
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in read_stats(tmp_path)] == [2, 3]
    assert "torn last line" in caplog.text
    resumed = make_trainer(TINY, data, classifier, lpips_model, tmp_path)
    assert resumed.resume() and resumed.train(progress=False).steps == 6
    lines = (tmp_path / STATS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 3, 4, 6]  # the torn line is gone from the file
    (tmp_path / STATS_FILE).write_text(lines[0] + "\n{broken\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match=r"stats.jsonl line 2 is not JSON"):  # damage elsewhere is not hidden
        read_stats(tmp_path)

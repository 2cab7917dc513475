"""Progress mirroring: a library bar writes its state; the pipeline's mirror shows it in the terminal."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from stylexlib.core import progress


def test_a_stage_bar_in_another_process_shows_in_the_terminal(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = Path("progress.json")  # relative, as `stylex run --out runs/demo` gives it; papermill changes the cwd
    out = io.StringIO()
    child = ("from stylexlib.core.progress import tqdm\n"
             "bar = tqdm(total=40, desc='stylex', disable=False)\n"
             "for i in range(40):\n    bar.update(1)\n    bar.set_postfix({'l1': 0.25})\n"
             "bar.close()\n")
    with progress.ProgressMirror(state, interval=0.05, file=out):
        assert os.environ[progress.PROGRESS_ENV] == str(tmp_path / "progress.json")  # what the kernel inherits
        monkeypatch.chdir(tmp_path.parent)
        subprocess.run([sys.executable, "-c", child], check=True, env=dict(os.environ), capture_output=True)
    assert progress.PROGRESS_ENV not in os.environ and not (tmp_path / "progress.json").exists()
    shown = out.getvalue()
    assert "stylex" in shown and "40/40" in shown and "l1=0.25" in shown


def test_a_mirror_writing_to_a_log_draws_a_bar_once_until_it_changes(tmp_path) -> None:
    state = tmp_path / "progress.json"
    out = io.StringIO()  # not a terminal: a log file, as `stylex run ... > log` gives it
    with progress.ProgressMirror(state, interval=0.01, file=out):
        state.write_text(json.dumps({"desc": "stylex", "n": 3, "total": 10, "unit": "it", "elapsed": 1.0,
                                     "postfix": "l1=0.3", "closed": False, "pid": 1}))
        time.sleep(0.5)  # 50 polls of an unchanged bar
        assert out.getvalue().count("3/10") == 1
        state.write_text(json.dumps({"desc": "stylex", "n": 4, "total": 10, "unit": "it", "elapsed": 1.5,
                                     "postfix": "l1=0.2", "closed": False, "pid": 1}))
        time.sleep(0.2)
        assert "4/10" not in out.getvalue()  # changed, but a log gets a bar at most every LOG_SECONDS
    assert "4/10" in out.getvalue()  # the last state is drawn when the stage ends


def test_bars_write_nothing_without_the_variable_and_throttle_with_it(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    with progress.tqdm(total=3, disable=False, file=io.StringIO()) as bar:
        bar.update(3)
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / "p.json"
    monkeypatch.setenv(progress.PROGRESS_ENV, str(path))
    bar = progress.tqdm(total=1000, desc="AttFind", disable=False, file=io.StringIO())
    for _ in range(999):
        bar.update(1)
    assert json.loads(path.read_text())["n"] < 999  # throttled: at most one write a second
    bar.update(1)
    bar.close()
    final = json.loads(path.read_text())
    assert final["n"] == 1000 and final["closed"] and final["desc"] == "AttFind"


def test_an_announced_line_shows_in_the_terminal_above_the_stage_bars(tmp_path, monkeypatch) -> None:
    """#39: the StylEx pace line ('about N steps fit ...') went only into the executed notebook, never to the terminal
    of `stylex run`."""
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    child = ("from stylexlib.core.progress import announce, tqdm\n"
             "bar = tqdm(total=4, desc='stylex', disable=False)\n"
             "bar.update(2)\n"
             "announce('[stylex] StylEx: about 7200 of 10000 steps fit in the 60-minute limit')\n"
             "bar.update(2)\nbar.close()\n")
    with progress.ProgressMirror("progress.json", interval=0.05, file=out):
        done = subprocess.run([sys.executable, "-c", child], check=True, env=dict(os.environ), capture_output=True,
                              text=True)
    assert "about 7200 of 10000 steps fit" in done.stdout  # the kernel's own output (the notebook) has it too
    assert out.getvalue().count("about 7200 of 10000 steps fit in the 60-minute limit") == 1
    assert not (tmp_path / ("progress.json" + progress.NOTES_SUFFIX)).exists()

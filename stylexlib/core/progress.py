"""Progress bars that a running pipeline can show in the terminal.

Library loops use :class:`tqdm` from here: tqdm.auto's bar (a widget in a notebook, text in a terminal) that also
mirrors its state to ``$STYLEX_PROGRESS_FILE`` when that is set. ``stylex run`` sets it for the notebook kernel and
shows the running stage's own bars (steps, rate, losses, ETA) under papermill's cell counter (:class:`ProgressMirror`),
and the lines the stage :func:`announce`s above them.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm as terminal_tqdm
from tqdm.auto import tqdm as auto_tqdm

from stylexlib.core.io import write_text

PROGRESS_ENV = "STYLEX_PROGRESS_FILE"
MIRROR_SECONDS = 1.0  # at most one write per bar and second
LOG_SECONDS = 30.0  # a terminal mirror writing to a file or pipe (a log) shows a changed bar at most this often
NOTES_SUFFIX = ".notes"  # next to the progress file: the lines a stage announces, one a line


def announce(message: str) -> None:
    """Print one line where the user sees it: the cell's output in a notebook, the terminal for the CLI, and under
    ``stylex run`` also the terminal, above the running stage's progress bars."""
    auto_tqdm.write(message)
    path = os.environ.get(PROGRESS_ENV)
    if path:
        try:
            with open(path + NOTES_SUFFIX, "a") as notes:
                notes.write(" ".join(message.split()) + "\n")
        except OSError:  # a courtesy, as the bars are
            pass


class tqdm(auto_tqdm):  # noqa: N801 (a drop-in for tqdm.auto.tqdm)
    """tqdm.auto's bar, mirrored to ``$STYLEX_PROGRESS_FILE`` (at most once a second, and when it closes)."""

    def __init__(self, *args, **kwargs) -> None:
        self._mirror_path = os.environ.get(PROGRESS_ENV)
        self._mirrored_at = 0.0
        super().__init__(*args, **kwargs)
        self._mirror(force=True)

    def update(self, n: float = 1) -> bool | None:
        shown = super().update(n)
        self._mirror()
        return shown

    def set_postfix(self, *args, **kwargs) -> None:
        super().set_postfix(*args, **kwargs)
        self._mirror()

    def close(self) -> None:
        if not getattr(self, "disable", True):
            self._mirror(force=True, closed=True)
        super().close()

    def _mirror(self, force: bool = False, closed: bool = False) -> None:
        if not self._mirror_path or getattr(self, "disable", True):
            return
        now = time.monotonic()
        if not force and now - self._mirrored_at < MIRROR_SECONDS:
            return
        self._mirrored_at = now
        d = self.format_dict
        state = {"desc": d.get("prefix") or "", "n": d["n"], "total": d["total"], "unit": d.get("unit", "it"),
                 "elapsed": d["elapsed"], "postfix": d.get("postfix") or "", "closed": closed, "pid": os.getpid()}
        try:
            write_text(self._mirror_path, json.dumps(state))
        except OSError:  # progress is a courtesy: never fail the work for it
            self._mirror_path = None


class ProgressMirror:
    """While a stage runs in another process, show the bars it mirrors to ``path`` in this terminal (a thread)."""

    def __init__(self, path: str | Path, interval: float = 0.5, file=sys.stderr) -> None:
        self.path, self.interval, self.file = Path(path).resolve(), interval, file  # papermill changes the cwd
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._bar: terminal_tqdm | None = None
        self._key: tuple | None = None
        self._shown: tuple | None = None  # the (n, postfix, closed) last drawn, and when
        self._shown_at = 0.0
        self._every = interval if getattr(file, "isatty", lambda: False)() else LOG_SECONDS
        self._notes = Path(str(self.path) + NOTES_SUFFIX)
        self._notes_shown = 0

    def __enter__(self) -> ProgressMirror:
        self.path.unlink(missing_ok=True)
        self._notes.unlink(missing_ok=True)
        self._previous = os.environ.get(PROGRESS_ENV)
        os.environ[PROGRESS_ENV] = str(self.path)  # the kernels started from here inherit it
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = self._previous
        self._stop.set()
        self._thread.join()
        self._show(final=True)  # the last state
        if self._bar is not None:
            self._bar.close()
        self.path.unlink(missing_ok=True)
        self._notes.unlink(missing_ok=True)

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            self._show()

    def _show(self, final: bool = False) -> None:
        """Print the new announced lines; draw the mirrored bar: a new bar at once, a changed one at most every
        ``_every`` seconds (or ``final``)."""
        self._show_notes()
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        key = (state["desc"], state["total"], state["pid"])
        shown = (state["n"], state["postfix"], state["closed"])
        if key == self._key and self._bar is not None:
            due = time.monotonic() - self._shown_at >= self._every
            if shown == self._shown or not (due or final or state["closed"]):
                return
        else:
            if self._bar is not None:
                self._bar.close()
            self._bar = terminal_tqdm(total=state["total"], desc=f"  {state['desc']}", unit=state["unit"],
                                      file=self.file, leave=True, dynamic_ncols=True)
            self._key = key
        self._shown, self._shown_at = shown, time.monotonic()
        self._bar.n = state["n"]
        self._bar.start_t = time.time() - state["elapsed"]  # rate and ETA as the stage measured them
        self._bar.set_postfix_str(state["postfix"], refresh=False)
        self._bar.refresh()

    def _show_notes(self) -> None:
        try:
            text = self._notes.read_text()
        except OSError:
            return
        lines = text[: text.rfind("\n") + 1].splitlines()  # whole lines: a line being written waits
        for line in lines[self._notes_shown:]:
            terminal_tqdm.write(f"  {line}", file=self.file)  # above the bar, which is drawn again below it
        self._notes_shown = max(self._notes_shown, len(lines))

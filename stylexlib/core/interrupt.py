"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM become a request a loop reads between steps, so it can save first."""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A loop stopped on a signal after saving its state; ``signum`` names the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """Which stop signal arrived (``signum``), if any, while :func:`stop_requests` was active."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


@contextlib.contextmanager
def stop_requests(what: str = "the loop") -> Iterator[StopRequest]:
    """While active, the first SIGINT/SIGTERM only sets the yielded request (a second one acts as it did before);
    the previous handlers come back on exit. Outside the main thread, signals cannot be caught: nothing changes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def handle(signum: int, frame: Any) -> None:
        request.signum = signum
        restore()  # a second Ctrl-C stops at once
        log.warning("%s received: %s stops after the current step and saves (send it again to stop at once)",
                    request.name, what)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handle)
    try:
        yield request
    finally:
        restore()

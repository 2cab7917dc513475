"""Advisory locks on files (``fcntl.flock``): one process at a time in a run folder, one writer at a time of a file.

The kernel drops a process's locks when it exits or dies, so a crashed holder never leaves a stale lock behind. The
lock file keeps the holder's pid while it is held, for the message another process gets.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

RUN_LOCK_FILE = ".stylex.lock"


class FolderLocked(ValueError):
    """Another process holds the lock; the message names its pid and the folder (a ValueError: a usage error)."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{folder} is in use by {holder} (another `stylex run` on the same folder?); wait for it "
                         f"to finish or stop it, or use another folder (--out)")
        self.folder, self.pid = folder, pid


def holder_pid(lock_file: str | Path) -> int | None:
    """The pid recorded in a lock file (None when it records none)."""
    try:
        return int(Path(lock_file).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def file_lock(lock_file: str | Path, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_file`` (created if missing); with ``wait=False`` raise :class:`FolderLocked`
    at once when another process holds it."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise FolderLocked(lock_file.parent, holder_pid(lock_file)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield lock_file
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def run_folder_lock(run_dir: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Hold a run folder for this process; a second holder fails at once with the first one's pid."""
    return file_lock(Path(run_dir) / RUN_LOCK_FILE)

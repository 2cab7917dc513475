"""Atomic file writes and small JSON/YAML helpers shared by every stage."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path`` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600: give the file the mode open() would
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def temp_dir(parent: str | Path, prefix: str, suffix: str) -> Path:
    """A new uniquely named folder in ``parent`` with the mode ``mkdir`` would give it (``mkdtemp`` makes 0700)."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix))
    os.chmod(path, 0o777 & ~current_umask())
    return path


def current_umask() -> int:
    """The process's file-mode creation mask (read from /proc where it can be, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda p: p.write_text(text))


def write_table(path: str | Path, table: Any, index: bool = False, **to_csv: Any) -> Path:
    """Atomically write a pandas table as CSV (without its index unless asked): the one way tables are written."""
    return write_text(path, table.to_csv(index=index, **to_csv))


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write JSON (indented, keys sorted)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    """Read JSON, or return ``default`` when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text())


def torch_save(path: str | Path, obj: Any) -> Path:
    """Atomically ``torch.save`` an object (tensors, dicts, lists, numbers, strings)."""
    return atomic_write(path, lambda p: torch.save(obj, p))


def torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`torch_save` without unpickling arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

"""Where generated data lives: a gitignored cache (``STYLEX_CACHE`` or ``data/cache``)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: the argument, else $STYLEX_CACHE, else ``data/cache`` under the project."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get("STYLEX_CACHE"):
        root = Path(os.environ["STYLEX_CACHE"])
    else:
        root = Path(__file__).resolve().parents[2] / "data" / "cache"
    root.mkdir(parents=True, exist_ok=True)
    return root

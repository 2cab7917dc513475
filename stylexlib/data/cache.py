"""Where generated data lives: ``$STYLEX_CACHE``, else the checkout's gitignored ``data/cache``, else the user cache."""
from __future__ import annotations

import os
from pathlib import Path

from stylexlib.core.install import default_cache


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: the argument, else $STYLEX_CACHE, else :func:`stylexlib.core.install.default_cache`."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get("STYLEX_CACHE"):
        root = Path(os.environ["STYLEX_CACHE"])
    else:
        root = default_cache()
    root.mkdir(parents=True, exist_ok=True)
    return root

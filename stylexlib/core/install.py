"""Where the package runs from: a source checkout (``pip install -e .``) or an installed copy (``pip install .``).

The numbered notebooks and the configs ship inside the package (``stylexlib/notebooks``, ``stylexlib/configs`` in a
wheel); a source checkout keeps them at the top, in ``notebooks/`` and ``configs/``. Generated data never goes into
an installed package: it goes to ``data/cache`` of a checkout, else to the user's cache folder.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def source_checkout() -> Path | None:
    """The project folder when the package is imported from a source checkout, else None."""
    root = PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def shipped(folder: str) -> Path:
    """``notebooks`` or ``configs``: the checkout's folder, else the copy installed with the package."""
    root = source_checkout()
    return root / folder if root is not None else PACKAGE / folder


DEFAULT_NOTEBOOKS = shipped("notebooks")  # the numbered notebooks `stylex run` executes unless told otherwise


def default_cache() -> Path:
    """``data/cache`` of a source checkout, else ``$XDG_CACHE_HOME/stylexlib`` (``~/.cache/stylexlib``)."""
    root = source_checkout()
    if root is not None:
        return root / "data" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stylexlib"

"""Test environment: headless plotting, Jupyter state in a temp dir, LPIPS weights from ../shared."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="stylex-tests-"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ["MPLCONFIGDIR"] = str(scratch / "mpl")
    os.environ["IPYTHONDIR"] = str(scratch / "ipython")
    os.environ["JUPYTER_CONFIG_DIR"] = str(scratch / "jupyter-config")
    os.environ["JUPYTER_DATA_DIR"] = str(scratch / "jupyter-data")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(scratch / "jupyter-runtime")
    os.environ["STYLEX_CACHE"] = str(scratch / "cache")
    if "TORCH_HOME" not in os.environ and (SHARED / "weights" / "torch").exists():
        os.environ["TORCH_HOME"] = str(SHARED / "weights" / "torch")

"""Test environment: headless plotting, Jupyter state in a temp dir, LPIPS weights from ../shared; headless Chromium."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium binary; its tests skip without one, except under CI=true, where they fail."""
    from stylexlib.report.gallery import find_chromium  # after pytest_configure has pointed matplotlib at scratch

    found = find_chromium()
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must have headless Chromium: .ci/run installs the 'chromium' apt package")
        pytest.skip("headless Chromium not installed (apt-get install chromium); CI runs this test")
    return found

"""Install honesty: the Python version pyproject allows can install the lock; `make chromium` never blocks `make test`
except under CI=true; the README says how to install CPU-only torch."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The oldest Python each numpy minor release supports (numpy's release notes): the lock's numpy sets the floor.
NUMPY_OLDEST_PYTHON = {(1, 26): (3, 9), (2, 0): (3, 9), (2, 1): (3, 10), (2, 2): (3, 10), (2, 3): (3, 11),
                       (2, 4): (3, 11)}


def test_requires_python_admits_no_version_the_lock_cannot_install() -> None:
    pinned = re.search(r"^numpy==(\d+)\.(\d+)", (REPO / "requirements.lock").read_text(), re.M)
    floor = re.search(r'requires-python\s*=\s*">=(\d+)\.(\d+)"', (REPO / "pyproject.toml").read_text())
    numpy = (int(pinned.group(1)), int(pinned.group(2)))
    assert numpy in NUMPY_OLDEST_PYTHON, f"add numpy {numpy}'s oldest Python to NUMPY_OLDEST_PYTHON"
    needed = NUMPY_OLDEST_PYTHON[numpy]
    assert (int(floor.group(1)), int(floor.group(2))) >= needed, \
        f"requirements.lock pins numpy {numpy[0]}.{numpy[1]}, which needs Python >= {needed[0]}.{needed[1]}"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("ci", ["", "true"])
def test_make_chromium_without_chromium_or_apt_get(tmp_path: Path, ci: str) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with a shell and `id` only: no chromium, no apt-get, no sudo
    bin_dir.mkdir()
    for tool in ("bash", "sh", "id"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "CI": ci}
    done = subprocess.run([shutil.which("make"), "-s", "-C", str(REPO), "chromium"], env=env, capture_output=True,
                          text=True, timeout=60)
    if ci == "true":
        assert done.returncode != 0 and "CI=true: Chromium is required" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines() == [
            "Chromium not found and not installable without a password (apt-get install chromium): "
            "the browser tests will be skipped"]


def test_the_readme_says_how_to_install_cpu_only_torch_before_make_install() -> None:
    readme = (REPO / "README.md").read_text()
    line = next((line for line in readme.splitlines() if "--index-url https://download.pytorch.org/whl/cpu" in line), "")
    assert "pip install torch" in line and "-c requirements.lock" in line  # the lock's version: make install keeps it
    assert "make install" in readme[readme.index(line):]

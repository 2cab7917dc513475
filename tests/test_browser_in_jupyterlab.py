"""The attribute browser in a real browser: JupyterLab serves stage 06's notebook on a tiny run, headless Chromium
runs it as the README says (``jupyter lab notebooks/06_attribute_gallery.ipynb``, run_dir set, Run > Run All Cells),
and moving the strength slider must change the shown image and probabilities."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import nbformat
import numpy as np
import psutil
import pytest
from PIL import Image
from playwright.sync_api import Locator, Page, sync_playwright

from stylexlib.pipeline.runner import run_pipeline

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/06_attribute_gallery.ipynb"
RUN_ALL = ("Run", "Run All Cells")  # the menu and its item
# The tiny config with a classifier trained long enough that an edit moves its probabilities visibly (at 3 decimals).
TINY_RUN = ["classifier.epochs=10", "classifier.lr=0.01"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder after `stylex run ... --out runs/tiny` (stages 01-05), with stage 06's notebook in notebooks/
    and its ``run_dir`` parameter set to that run, as the README tells the user to set it."""
    root = tmp_path_factory.mktemp("project")
    run_pipeline(REPO / "configs" / "tiny.yaml", TINY_RUN, out=root / "runs" / "tiny",
                 only=["01", "02", "03", "04", "05"], progress=False)
    notebook = nbformat.read(REPO / NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source, count = re.subn(r'^run_dir: str = ".*?"', 'run_dir: str = "../runs/tiny"', parameters.source,
                                       flags=re.M)
    assert count == 1, "notebook 06's parameters cell no longer has a `run_dir: str = ...` line"
    (root / "notebooks").mkdir()
    nbformat.write(notebook, root / NOTEBOOK)
    return root


def server_info(path: Path) -> dict | None:
    """A Jupyter server's runtime file (port, root_dir, ...); None until it exists and is completely written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextlib.contextmanager
def jupyterlab(root: Path, notebook: str, log: Path, timeout: float = 90) -> Iterator[str]:
    """`jupyter lab NOTEBOOK` started in ``root`` on a free localhost port with a fresh token; yields the URL that opens
    the notebook. On exit the server is shut down through its API (it stops its kernels), then the rest is killed."""
    runtime, settings = log.parent / "jupyter-runtime", log.parent / "lab-settings"
    # "Never" to JupyterLab's question about fetching Jupyter news: its notification would cover part of the page
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    env.pop("MPLBACKEND", None)  # conftest's Agg would hide the notebook's figures; a user's kernel shows them inline
    token = secrets.token_hex(16)
    command = [str(Path(sys.executable).with_name("jupyter")), "lab", notebook,
               # what a headless test adds to the README's command: no browser of its own, a free port, our token
               "--no-browser", "--ip=127.0.0.1", "--port=0", f"--IdentityProvider.token={token}",
               *(["--allow-root"] if os.geteuid() == 0 else [])]  # CI runs as root
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    family: list[psutil.Process] = []
    base = ""
    try:
        info_file = runtime / f"jpserver-{server.pid}.json"  # written once the server listens
        wait_for(lambda: server.poll() is not None or server_info(info_file), timeout,
                 lambda: f"JupyterLab did not start in {timeout} s:\n{log.read_text()[-3000:]}")
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {server.poll()}:\n{log.read_text()[-3000:]}")
        info = server_info(info_file)
        base = f"http://127.0.0.1:{info['port']}"
        # given a notebook, the server's root is the notebook's folder
        opened = (root / notebook).resolve().relative_to(Path(info["root_dir"]).resolve())
        yield f"{base}/lab/tree/{opened.as_posix()}?token={token}"
    finally:
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(server.pid)
            family = [parent, *parent.children(recursive=True)]
        if base and server.poll() is None:
            with contextlib.suppress(OSError):
                request = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                                 headers={"Authorization": f"token {token}"})
                urllib.request.urlopen(request, timeout=10).close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        for process in family:  # kernels run in sessions of their own: a server killed mid-way leaves them behind
            with contextlib.suppress(psutil.Error):
                process.kill()  # psutil checks that the pid is still that process
        server.wait(timeout=10)


def wait_for(condition: Callable[[], object], timeout: float, message: Callable[[], str]) -> None:
    """Poll ``condition`` until it is truthy; fail with ``message()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(message())
        time.sleep(0.25)


def shown_pixels(image: Locator) -> np.ndarray:
    """The pixels an <img> of the page shows: its (blob) source fetched in the page and decoded."""
    data = image.evaluate("async img => Array.from(new Uint8Array(await (await fetch(img.src)).arrayBuffer()))")
    return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB")).astype(int)


def table_cells(table: Locator) -> list[list[str]]:
    """The text of each cell of an HTML table's rows after its header row."""
    return table.evaluate("t => Array.from(t.rows).slice(1).map(r => Array.from(r.cells, c => c.textContent.trim()))")


def idle(page: Page) -> Locator:
    """JupyterLab's status bar while the notebook's kernel is connected and idle."""
    return page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\(ipykernel\) \| Idle"))


def run_all_cells(page: Page, url: str) -> Locator:
    """Open the notebook at ``url``, Run > Run All Cells once its kernel is up; the attribute browser it shows."""
    page.goto(url)
    # the kernel started and connected (the toolbar says "idle" already before there is a kernel)
    idle(page).wait_for()
    for item in RUN_ALL:
        page.get_by_role("menuitem", name=item, exact=True).click()
    widget = page.locator(".jp-OutputArea-output .widget-vbox:has(.widget-hslider)")
    output = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.{}']"
    errors = page.locator(f"{output.format('error')}, {output.format('stderr')}:has-text('Traceback')")
    wait_for(lambda: widget.count() or errors.count(), 180, lambda: "the attribute browser never appeared")
    assert not errors.count(), f"notebook 06 failed in JupyterLab:\n{errors.first.text_content()[-3000:]}"
    return widget


def test_the_attribute_browser_renders_in_jupyterlab_and_its_slider_changes_the_edit(project: Path, tmp_path: Path,
                                                                                    chromium: str) -> None:
    with jupyterlab(project, NOTEBOOK, tmp_path / "jupyterlab.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            widget = run_all_cells(page, url)
            widget.scroll_into_view_if_needed()
            readout, handle, kernel_idle = widget.locator(".widget-readout"), widget.locator(".noUi-handle"), idle(page)
            status, table = widget.locator(".widget-html-content small").last, widget.locator("table")
            images = widget.locator("img")  # input, original (reconstruction), changed
            wait_for(lambda: readout.inner_text() == "0.50" and kernel_idle.count(), 60,  # the last cell is done
                     lambda: f"the last cell's strength 0.5 never reached the slider: {readout.inner_text()!r}")
            assert images.count() == 3
            assert [images.nth(i).evaluate("img => img.naturalWidth") for i in range(3)] == [192, 192, 192]
            assert "p(changed)" in table.locator("tr").first.inner_text()
            probabilities = table_cells(table)  # per class: name, p(input), p(original), p(changed), change
            assert [row[0] for row in probabilities] == ["frown", "smile"]
            original, before = shown_pixels(images.nth(1)), shown_pixels(images.nth(2))
            assert np.abs(before - original).mean() > 0  # strength 0.5: an edit is shown

            handle.focus()
            page.keyboard.press("End")  # the slider to its maximum, 2
            wait_for(lambda: readout.inner_text() == "2.00", 10,
                     lambda: f"the slider did not move: {readout.inner_text()!r}")
            wait_for(lambda: not np.array_equal(shown_pixels(images.nth(2)), before), 30,
                     lambda: f"the changed image stayed the same after the slider moved to 2 ({status.inner_text()!r})")
            wait_for(lambda: "at strength 2.00" in status.inner_text()
                     and [row[3] for row in table_cells(table)] != [row[3] for row in probabilities], 30,
                     lambda: f"p(changed) stayed the same after the slider moved to 2: {table_cells(table)}")
            assert [row[:3] for row in table_cells(table)] == [row[:3] for row in probabilities]  # input and original
            after = shown_pixels(images.nth(2))
            assert np.array_equal(shown_pixels(images.nth(1)), original)  # the slider edits; the original stays
            assert np.abs(after - original).mean() > np.abs(before - original).mean()  # further from the original

            page.keyboard.press("Home")  # strength 0: no edit, the changed image is the original
            wait_for(lambda: np.array_equal(shown_pixels(images.nth(2)), original), 30,
                     lambda: f"at strength 0 the changed image is not the original ({status.inner_text()!r})")
            wait_for(lambda: [row[4] for row in table_cells(table)] == ["+0.000", "+0.000"], 30,
                     lambda: f"at strength 0 the probabilities still change: {table_cells(table)}")
            assert readout.inner_text() == "0.00"
        except BaseException:
            page.screenshot(path=tmp_path / "jupyterlab.png")
            print(f"the page when the test failed: {tmp_path / 'jupyterlab.png'}; the server's log: "
                  f"{tmp_path / 'jupyterlab.log'}")
            raise
        finally:
            browser.close()


def test_the_readme_gives_the_steps_this_test_takes() -> None:
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"`.venv/bin/jupyter lab {NOTEBOOK}`" in readme and '`run_dir = "../runs/demo"`' in readme
    assert " > ".join(RUN_ALL) in readme

"""Lesson 6 in a real browser: JupyterLab 4 (started by tools/lab.sh, as `make lab` does) on a
temporary copy of the course, driven by Debian's headless chromium through Playwright.

A solved copy of the lesson runs all its cells from the Run menu, on an idle machine and with every
core kept busy by other processes; changing the explorer's layer control changes the overlay; no
cell shows an error; nbgrader's Validate button passes the solved copy and fails the blank one.
Screenshots of the explorer at two layers are kept in `outputs/browser/` (or $COURSE_ARTEFACTS),
and their paths are printed.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from grader.layout import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

LESSON = "06_inner_layers"
ARTEFACTS = Path(os.environ.get("COURSE_ARTEFACTS", ROOT / "outputs" / "browser"))
CURRENT = ".jp-NotebookPanel:not(.lm-mod-hidden)"       # the notebook in view
RUN_ALL_TIMEOUT_MS = 600_000     # how long to wait for the lesson's cells (not a test of speed)
STARTED_TIMEOUT_MS = 120_000     # how long Run All may take to start the first cell


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Poll the server's status API until it answers; fail with its log if it exits."""
    for _ in range(600):
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer at {url}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free localhost port with a token, serving a temporary course folder with two
    solved copies of the lesson (`solved`, `loaded`: one per Run All) and a blank one. The page
    exposes the app (`window.jupyterapp`) so the tests can read the kernel's state. Yields (base
    url, token, folder)."""
    course = tmp_path_factory.mktemp("lab-course")
    shutil.copy(ROOT / "nbgrader_config.py", course)
    for kind, folder in (("correct", "solved"), ("correct", "loaded"), ("blank", "blank")):
        classroom.write(classroom.submission(LESSON, kind), course / folder / f"{LESSON}.ipynb")
    settings = course / ".settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell (JupyterLab 4 only renders the cells in view by default) so the page holds all outputs.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(course / ".jupyter"),
           "JUPYTER_RUNTIME_DIR": str(course / ".runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(course / ".settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(course / ".workspaces")}
    log = course / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(ROOT / "tools" / "lab.sh"), "--no-browser", "--ip=127.0.0.1",
                                 f"--port={port}", f"--IdentityProvider.token={token}",
                                 f"--ServerApp.root_dir={course}", "--ServerApp.port_retries=0",
                                 "--LabApp.expose_app_in_browser=True"],
                                cwd=course, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{base}/api/status?token={token}", proc, log)
        yield base, token, course
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def open_notebook(browser, lab, folder: str):
    """A page showing the lesson's notebook in `folder`, its kernel idle."""
    base, token, _ = lab
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # `reset`: a fresh workspace, so a notebook opened by an earlier page is not restored next to it
    page.goto(f"{base}/lab/tree/{folder}/{LESSON}.ipynb?reset&token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    kernel_idle(page)
    return page


def kernel_idle(page, timeout: float = 120_000) -> None:
    """Wait until the notebook in view has a kernel, connected and idle. Not the toolbar's status
    indicator: it says idle before any kernel exists, and a Run All in that window (a kernel start
    takes a minute on a busy machine) asks which kernel to start and runs nothing."""
    page.wait_for_function(
        """() => { const k = window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel;
                   return !!k && k.connectionStatus === 'connected' && k.status === 'idle'; }""",
        timeout=timeout)


def menu(page, top: str, item: str) -> None:
    """Click `item` in the menu bar's `top` menu, as a user would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def run_all(page) -> float:
    """Run > Run All Cells, then wait until every code cell has an execution number; returns the
    seconds taken. Fails early, with a screenshot, when no cell starts (a dialog asks instead)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    start = time.perf_counter()
    menu(page, "Run", "Run All Cells")
    prompts = "[...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim())"
    dialog = "document.querySelector('.jp-Dialog') !== null"
    started = f"() => {dialog} || {prompts}.some(t => /^\\[(\\*|\\d+)\\]:$/.test(t))"
    finished = f"() => {{ const p = {prompts}; return {dialog} || (p.length > 0 && p.every(t => /^\\[\\d+\\]:$/.test(t))); }}"
    try:
        page.wait_for_function(started, timeout=STARTED_TIMEOUT_MS)
    except PlaywrightTimeout:
        page.screenshot(path=str(ARTEFACTS / "run-all-started-nothing.png"))
        pytest.fail(f"Run All started no cell in {STARTED_TIMEOUT_MS // 1000} s; the page: "
                    f"{ARTEFACTS / 'run-all-started-nothing.png'}")
    page.wait_for_function(finished, timeout=RUN_ALL_TIMEOUT_MS)
    if page.locator(".jp-Dialog").count():
        page.screenshot(path=str(ARTEFACTS / "run-all-dialog.png"))
        pytest.fail(f"Run All opened a dialog instead of running the cells:\n{page.locator('.jp-Dialog').inner_text()}")
    kernel_idle(page)
    return time.perf_counter() - start


@contextmanager
def busy_cores(n: int):
    """`n` other processes, each spinning on one core, for the duration of the block."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
        for p in spinners:
            p.wait()


def save(page) -> None:
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=30_000)


def overlay_bytes(page) -> bytes:
    """The explorer's overlay image as the browser has it (the PNG behind its blob URL)."""
    data = page.evaluate("""async () => { const img = document.querySelector('img.cam-overlay');
        const buf = await (await fetch(img.src)).arrayBuffer();
        return Array.from(new Uint8Array(buf)); }""")
    return bytes(data)


CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("folder, busy", [("solved", 0), ("loaded", CORES)], ids=["idle", "every-core-busy"])
def test_lesson_runs_in_jupyterlab_and_the_layer_control_moves_the_overlay(browser, lab, folder, busy):
    with busy_cores(busy):              # from opening the notebook (its kernel starts) to the last check
        page = open_notebook(browser, lab, folder)
        seconds = run_all(page)
        print(f"\nRun All: {seconds:.0f} s with {busy} of {CORES} cores kept busy by other processes")
        explorer = page.locator(".cam-explorer")
        explorer.wait_for(timeout=60_000)
        layer = explorer.locator(".widget-dropdown", has_text="layer").locator("select")
        assert layer.input_value() == "model[0][4]"
        prefix = "" if folder == "solved" else f"{folder}-"
        shots = [ARTEFACTS / f"{prefix}explorer-model[0][4].png", ARTEFACTS / f"{prefix}explorer-model[0][1].png"]
        before = overlay_bytes(page)
        explorer.screenshot(path=str(shots[0]))
        layer.select_option("model[0][1]")
        page.wait_for_function(
            "() => document.querySelector('.cam-explorer .cam-caption').textContent.includes('model[0][1] (32×32)')",
            timeout=60_000)
        after = overlay_bytes(page)
        explorer.screenshot(path=str(shots[1]))
        print("screenshots:", *shots, sep="\n  ")
        assert before[:8] == after[:8] == b"\x89PNG\r\n\x1a\n"
        assert before != after, "changing the layer did not change the overlay image"
        assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                            has_text="Traceback").count() == 0
        save(page)
    nb = nbformat.read(lab[2] / folder / f"{LESSON}.ipynb", as_version=4)
    errors = [(c.get("id"), o.get("ename"), o.get("evalue")) for c in nb.cells if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors, f"cells raised in the browser: {errors}"
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    page.close()


@pytest.mark.parametrize("folder, verdict", [("solved", "validation-success"), ("blank", "validation-failed")])
def test_nbgraders_validate_button_gives_the_expected_verdict(browser, lab, folder, verdict):
    page = open_notebook(browser, lab, folder)
    page.locator(f"{CURRENT} .validate-button").click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator(".validation-success, .validation-failed, pre").first.wait_for(timeout=RUN_ALL_TIMEOUT_MS)
    found = dialog.locator(f".{verdict}").count()
    text = dialog.inner_text()
    page.screenshot(path=str(ARTEFACTS / f"validate-{folder}.png"))
    assert found == 1, f"expected {verdict} for the {folder} lesson, the dialog says:\n{text[:2000]}"
    if verdict == "validation-success":
        assert "Success! Your notebook passes all the tests." in text
    else:                                   # the first exercise's test, failing on the release's stub
        assert "every_stage(_body)" in text and "NotImplementedError" in text
    page.close()

"""Lesson 6 in a real browser: JupyterLab 4 (started by tools/lab.sh, as `make lab` does) on a
temporary copy of the course, driven by Debian's headless chromium through Playwright.

A solved copy of the lesson runs all its cells from the Run menu; changing the explorer's layer
control changes the overlay; no cell shows an error; nbgrader's Validate button passes the solved
copy and fails the blank one. Screenshots of the explorer at two layers are kept in
`outputs/browser/` (or $COURSE_ARTEFACTS), and their paths are printed.
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
    """JupyterLab on a free localhost port with a token, serving a temporary course folder with a
    solved and a blank copy of the lesson. Yields (base url, token, folder)."""
    course = tmp_path_factory.mktemp("lab-course")
    shutil.copy(ROOT / "nbgrader_config.py", course)
    for kind, folder in (("correct", "solved"), ("blank", "blank")):
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
                                 f"--ServerApp.root_dir={course}", "--ServerApp.port_retries=0"],
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
    """Wait until the notebook's kernel reports idle."""
    page.wait_for_function(
        f"() => {{ const s = document.querySelector(\"{CURRENT} [data-status]\");"
        " return s && s.getAttribute('data-status') === 'idle'; }", timeout=timeout)


def menu(page, top: str, item: str) -> None:
    """Click `item` in the menu bar's `top` menu, as a user would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def run_all(page) -> None:
    """Run > Run All Cells, then wait until every code cell has an execution number."""
    menu(page, "Run", "Run All Cells")
    page.wait_for_function(
        """() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                     .map(e => e.textContent.trim());
                   return p.length > 0 && p.every(t => /^\\[\\d+\\]:$/.test(t)); }""",
        timeout=RUN_ALL_TIMEOUT_MS)
    kernel_idle(page)


def save(page) -> None:
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=30_000)


def overlay_bytes(page) -> bytes:
    """The explorer's overlay image as the browser has it (the PNG behind its blob URL)."""
    data = page.evaluate("""async () => { const img = document.querySelector('img.cam-overlay');
        const buf = await (await fetch(img.src)).arrayBuffer();
        return Array.from(new Uint8Array(buf)); }""")
    return bytes(data)


def test_lesson_runs_in_jupyterlab_and_the_layer_control_moves_the_overlay(browser, lab):
    page = open_notebook(browser, lab, "solved")
    run_all(page)
    explorer = page.locator(".cam-explorer")
    explorer.wait_for(timeout=60_000)
    layer = explorer.locator(".widget-dropdown", has_text="layer").locator("select")
    assert layer.input_value() == "model[0][4]"
    shots = [ARTEFACTS / "explorer-model[0][4].png", ARTEFACTS / "explorer-model[0][1].png"]
    before = overlay_bytes(page)
    explorer.screenshot(path=str(shots[0]))
    layer.select_option("model[0][1]")
    page.wait_for_function(
        "() => document.querySelector('.cam-explorer .cam-caption').textContent.includes('model[0][1] (32×32)')",
        timeout=60_000)
    after = overlay_bytes(page)
    explorer.screenshot(path=str(shots[1]))
    print("\nscreenshots:", *shots, sep="\n  ")
    assert before[:8] == after[:8] == b"\x89PNG\r\n\x1a\n"
    assert before != after, "changing the layer did not change the overlay image"
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                        has_text="Traceback").count() == 0
    save(page)
    nb = nbformat.read(lab[2] / "solved" / f"{LESSON}.ipynb", as_version=4)
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

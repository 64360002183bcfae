"""The notebooks in a real browser: JupyterLab on loopback, driven by headless Chromium.

Starts JupyterLab (token auth, free port, temporary root, settings and workspace) with
``MSAM_SMOKE=1``, opens the imbalance-lab notebook, runs all cells, checks that the plotly
figures rendered as SVG, moves a modality-strength slider and checks that the figure it
drives changed, and saves screenshots in ``$MSAM_SCREENSHOT_DIR`` (default
``<tmp>/msam_browser/``; the paths are printed, run with ``-s`` to see them).

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install chromium``) and the
``playwright`` Python package (dev extras); Playwright's own browser downloads are not used.
Without Chromium the test skips, unless ``MSAM_REQUIRE_BROWSER=1`` (set by ``.ci/run``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("MSAM_CHROMIUM", "/usr/bin/chromium"))
NOTEBOOK = "02_imbalance_and_msam.ipynb"
# Loopback only: no network, no first-run or background traffic, no GPU.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(
    os.environ.get("MSAM_SCREENSHOT_DIR", Path(tempfile.gettempdir()) / "msam_browser")
)
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 300

pytestmark = pytest.mark.browser


def _require_browser() -> None:
    """Skip (or fail under MSAM_REQUIRE_BROWSER=1) when Chromium or Playwright is missing."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(
            f"Chromium not found at {CHROMIUM}; install it with `apt-get install chromium` "
            "(or set MSAM_CHROMIUM to a Chromium binary)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append(
            "the playwright package is missing; install the dev extras: pip install -e '.[dev]'"
        )
    if not missing:
        return
    message = "real-browser test not run: " + "; ".join(missing)
    if os.environ.get("MSAM_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " (MSAM_REQUIRE_BROWSER=1 makes this test mandatory)")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_lab_settings(settings: Path) -> None:
    """No news or update checks (no network); every cell rendered (no virtual scrolling);
    the notebook's kernel started without asking."""
    entries = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
            "windowingMode": "none",
            "autoStartDefaultKernel": True,  # no "Select Kernel" dialog
        },
    }
    for name, value in entries.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value), encoding="utf-8")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving a copy of the notebooks; yields (url, token, root)."""
    _require_browser()
    home = tmp_path_factory.mktemp("lab")
    root = home / "root"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    _write_lab_settings(home / "settings")
    token = os.urandom(16).hex()
    port = _free_port()
    env = dict(
        os.environ,
        MSAM_SMOKE="1",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
    )
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # containers often run as root
    log_path = home / "jupyterlab.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"JupyterLab exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
                )
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"JupyterLab did not answer in {START_TIMEOUT_S}s:\n"
                        f"{log_path.read_text()[-3000:]}"
                    )
                time.sleep(0.5)
        yield url, token, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    """A fresh browser context per test: one JupyterLab page showing one notebook."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        yield page
    finally:
        context.close()


# JS: the y/z arrays of every plotly graph in the open notebook, as one JSON string per graph.
PLOT_DATA_JS = """(selector) => Array.from(document.querySelectorAll(selector)).map(
    g => JSON.stringify((g.data || []).map(t => [t.x, t.y, t.z])))"""
TRACE_COUNTS_JS = """(selector) => Array.from(document.querySelectorAll(selector)).map(
    g => (g.data || []).length)"""
# JS: prompt of every code cell ("[3]:", "[*]:", "[ ]:").
PROMPTS_JS = """() => Array.from(
    document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')
).map(e => e.textContent.trim())"""
ERRORS_JS = """() => Array.from(document.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
)).map(e => e.textContent).filter(t => /Traceback|Error/.test(t))"""


def _failure_screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"failed_{Path(name).stem}.png"
    page.screenshot(path=str(shot))
    return shot


def _kernel_ready(url: str, token: str, name: str) -> bool:
    """True once the server holds an idle kernel for notebook ``name`` (REST /api/sessions)."""
    with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=5) as reply:
        sessions = json.load(reply)
    return any(
        s.get("path", "").endswith(name)
        and (s.get("kernel") or {}).get("execution_state") == "idle"
        for s in sessions
    )


def _open_and_run_all(page, url: str, token: str, name: str) -> None:
    page.goto(f"{url}/lab/tree/{name}?token={token}&reset")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _kernel_ready(url, token, name):
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: no idle kernel after {START_TIMEOUT_S}s")
        time.sleep(0.5)
    # The page may still be connecting to that kernel, and Run All without a connection runs
    # nothing: press it again until the first cell has started.
    for _attempt in range(10):
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        try:
            page.wait_for_function(
                f"() => {{ const p = ({PROMPTS_JS})(); return p.length && p[0] !== '[ ]:'; }}",
                timeout=5_000,
            )
            break
        except Exception:  # playwright's TimeoutError: nothing ran yet
            continue
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        prompts = page.evaluate(PROMPTS_JS)
        done = prompts and all(p.startswith("[") and p[1:-2].strip().isdigit() for p in prompts)
        errors = page.evaluate(ERRORS_JS)
        assert errors == [], f"{name}: a cell raised in the browser:\n{errors[0][-2000:]}"
        if done:
            return
        if time.monotonic() > deadline:
            shot = _failure_screenshot(page, name)
            pytest.fail(
                f"{name}: cells still running after {RUN_TIMEOUT_S}s: {prompts}; see {shot}"
            )
        time.sleep(0.5)


def test_imbalance_lab_renders_and_reacts_to_a_slider(page, lab):
    url, token, _root = lab
    _open_and_run_all(page, url, token, NOTEBOOK)

    # Every displayed plotly figure rendered to SVG: the static figures of joint training and
    # the lab's four FigureWidgets (strength preview, two Shapley shares, comparison).
    page.wait_for_selector(".js-plotly-plot .main-svg", state="attached")
    plots = page.locator(".js-plotly-plot")
    assert plots.count() >= 6
    assert page.locator(".js-plotly-plot .main-svg").count() >= plots.count()
    # After lab.run(wait=True) every lab figure holds traces in the browser, not only in Python.
    lab_traces = page.evaluate(TRACE_COUNTS_JS, ".msam-imbalance-lab .js-plotly-plot")
    assert len(lab_traces) == 4 and min(lab_traces) >= 1, lab_traces

    # Move the first modality's strength slider with the keyboard, as a reader would.
    # The FigureWidget's own element is the plotly graph div (classes added in Python land on it).
    preview = ".msam-strength-preview.js-plotly-plot, .msam-strength-preview .js-plotly-plot"
    page.wait_for_selector(preview)
    before = page.evaluate(PLOT_DATA_JS, preview)
    handle = page.locator(".msam-strength-slider .noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(3):
        handle.press("ArrowLeft")
    deadline = time.monotonic() + 30
    while page.evaluate(PLOT_DATA_JS, preview) == before:
        if time.monotonic() > deadline:
            pytest.fail("moving the strength slider did not change the preview figure")
        time.sleep(0.25)

    # Outside pytest's temporary tree (pruned after a few sessions), so the image outlives it.
    folder = SCREENSHOTS
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "imbalance_lab.png"
    page.set_viewport_size({"width": 1400, "height": 2400})  # room for the whole lab
    lab_widget = page.locator(".msam-imbalance-lab")
    lab_widget.scroll_into_view_if_needed()
    lab_widget.screenshot(path=str(shot))
    page.screenshot(path=str(folder / "jupyterlab.png"))
    print(f"\nscreenshots: {shot} and {folder / 'jupyterlab.png'}")
    assert shot.stat().st_size > 10_000


def test_live_monitor_figures_fill_in_the_browser(page, lab):
    """06: training runs in a thread; its records reach the browser's figures as it goes."""
    url, token, root = lab
    _open_and_run_all(page, url, token, "06_live_dashboard.ipynb")
    monitors = ".msam-monitor"
    page.wait_for_selector(f"{monitors} .js-plotly-plot .main-svg", state="attached")
    # The first figure of each monitor is its loss curve: x = the steps the run recorded.
    steps = page.evaluate(
        """(selector) => Array.from(document.querySelectorAll(selector)).map(m => {
            const g = m.querySelector('.js-plotly-plot');
            return g && g.data && g.data.length ? Array.from(g.data[0].x).length : 0; })""",
        monitors,
    )
    recorded = []
    for method in ("msam", "joint"):
        lines = (root / "runs" / "06_live" / method / "iterations.jsonl").read_text()
        recorded.append(len(lines.splitlines()))
    # The notebook displays the M-SAM monitor twice (built, then after start) and joint once.
    assert len(steps) == 3 and min(recorded) > 0, (steps, recorded)
    assert steps[0] == steps[1] == recorded[0] and steps[2] == recorded[1], (steps, recorded)
    status = page.locator(f"{monitors} .widget-html").all_inner_texts()
    assert any("finished" in text for text in status), status

"""The course as a student meets it: JupyterLab in headless Chromium.

One JupyterLab server (127.0.0.1, a port the server picks, a random token)
over a temporary copy of notebooks/ plus two fixtures, one browser (Debian's ``chromium``,
driven by Playwright with ``executable_path``: nothing is downloaded), and
for each notebook: open it, Run All Cells, wait, save, then assert

* every code cell ran (it has an execution count) and none has an error
  output (read from the saved file; stderr warnings are not errors);
* where the notebook shows a slider: moving it changes what the notebook
  shows (text or figure), not only the slider's own readout.

A screenshot of each notebook goes to ``screenshots/`` (gitignored).
Notebooks run two at a time (the next opens as soon as one ends), each kernel
with half the cores' threads; BROWSER_NOTEBOOKS="01_*,05_*" picks some lessons
(the fixtures always run). Without /usr/bin/chromium the tests skip and
say how to install it, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from grader.execute import cores_per_process, threads_env

BROWSER = [pytest.mark.browser, pytest.mark.timeout(900)]   # the whole run, server start-up included

CHROMIUM = Path(os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium"))
INSTALL_HINT = ("install it with: sudo apt-get update && sudo apt-get install -y chromium (Debian/Ubuntu), "
                "or point COURSE_CHROMIUM at any Chromium or Chrome binary, e.g. on macOS "
                "COURSE_CHROMIUM='/Applications/Google Chrome.app/Contents/MacOS/Google Chrome'")
FIXTURES = sorted((ROOT / "tests" / "fixtures_browser").glob("*.ipynb"))
# BROWSER_NOTEBOOKS="01_*,05_*" runs only those lessons (the fixtures always run)
PATTERNS = [p for p in os.environ.get("BROWSER_NOTEBOOKS", "*").split(",") if p]
NOTEBOOKS = sorted({p for pattern in PATTERNS for p in (ROOT / "notebooks").glob(pattern + ".ipynb"
                    if not pattern.endswith(".ipynb") else pattern)}) + FIXTURES
ERROR_FIXTURE = "browser_fixture_error.ipynb"
SLIDER_FIXTURE = "browser_fixture_slider.ipynb"
AT_ONCE = 2                  # notebooks running together
SERVER_STARTS = 3            # JupyterLab starts to try when its port is taken before it binds
RUN_TIMEOUT_S = 240          # one notebook, Run All to idle
SCREENSHOTS = ROOT / "screenshots"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
# JupyterLab settings for the test only: render every cell (no windowing, so
# every output is in the page) and no news / update pop-ups.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} not found: the JupyterLab browser test needs a Chromium; {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true: " + message + " (.ci/run installs it)", pytrace=False)
    pytest.skip(message)


def _prepare_root(root: Path) -> None:
    """Copies of the notebooks (the committed files are never touched), on a kernel that exists."""
    from jupyter_client.kernelspec import KernelSpecManager
    kernels = set(KernelSpecManager().find_kernel_specs())
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        if nb.metadata.get("kernelspec", {}).get("name") not in kernels:  # `make setup` installs dlsys-perf
            nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, root / path.name)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1; yields (base url, token, root folder)."""
    _require_chromium()
    base = tmp_path_factory.mktemp("lab")
    root, settings = base / "root", base / "settings"
    root.mkdir()
    _prepare_root(root)
    for name, value in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    token = secrets.token_hex(16)
    # AT_ONCE kernels share the cores: each starts its share of threads (threads_env says why)
    env = threads_env(cores_per_process(AT_ONCE), dict(
        os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(base / "ws"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"), COURSE_DEVICE="cpu"))
    # port 0: the server asks the OS for a free port itself (no port chosen here and bound later)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           "--ServerApp.port=0", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--ServerApp.allow_root=True")  # CI runs as root; without it the server exits
    server, url = _start_server(cmd, env, root, base / "runtime", token, base)
    try:
        yield url, token, root
    finally:
        _stop(server)


class PortTaken(RuntimeError):
    """The server exited because another process took its port first."""


def _start_server(cmd: list[str], env: dict, root: Path, runtime: Path, token: str, logs: Path):
    """Start JupyterLab (``cmd``); return (process, its url) once it answers.

    Jupyter Server 2.x binds port 0 to learn a free port, closes that socket and
    binds the port again when its event loop starts. If another process takes
    the port in between, the server logs "already in use" and exits; then a
    fresh server (a fresh port) is started, up to SERVER_STARTS times.
    """
    for attempt in range(1, SERVER_STARTS + 1):
        log_path = logs / f"server-{attempt}.log"
        with log_path.open("w") as log:
            server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
        try:
            return server, _wait_for_server(server, runtime / f"jpserver-{server.pid}.json", token, log_path)
        except PortTaken:
            _stop(server)
            if attempt == SERVER_STARTS:
                raise
        except BaseException:
            _stop(server)
            raise


def _server_url(info_file: Path) -> str | None:
    """The server's url from the runtime file it writes once its port is known, or None before."""
    try:
        info = json.loads(info_file.read_text())
    except (OSError, ValueError):    # not written yet, or half written
        return None
    return f"http://127.0.0.1:{info['port']}"


def _wait_for_server(server, info_file: Path, token: str, log: Path, timeout: float = 90) -> str:
    """Until the server answers /api/status; return its url."""
    deadline, url = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            text = log.read_text()
            error = PortTaken if "already in use" in text else RuntimeError
            raise error(f"JupyterLab exited with {server.returncode}:\n{text[-3000:]}")
        url = url or _server_url(info_file)
        try:
            if url:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as reply:
                    if reply.status == 200:
                        return url
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(server) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


# ---------------------------------------------------------------------------
# driving one notebook
# ---------------------------------------------------------------------------

PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"   # the notebook on show in this tab
STATE_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return {prompts: [], status: null};
  const prompts = Array.from(panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt'))
                       .map(e => e.textContent.trim());
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  return {prompts: prompts, status: indicator ? indicator.getAttribute('data-status') : null};
}"""
KERNEL_IDLE_JS = """() => Array.from(document.querySelectorAll('.jp-StatusBar-TextItem'))
                     .some(e => /\\|\\s*Idle$/.test(e.textContent.trim()))"""
# What the notebook shows, minus each slider's own readout (which always changes).
SHOWN_JS = """() => Array.from(document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')).map(el => {
  const copy = el.cloneNode(true);
  copy.querySelectorAll('.widget-readout, .widget-slider').forEach(r => r.remove());
  const images = Array.from(el.querySelectorAll('img')).map(i => i.src.length + ':' + i.src.slice(-64));
  return copy.textContent + images.join(',');
}).join('\\n')"""
SLIDER_WORDS = re.compile(r"\b\w*Slider\b")


@dataclass
class LabRun:
    """What happened to one notebook in the browser."""
    name: str
    problems: list[str] = field(default_factory=list)   # errors, cells not run, harness failures
    slider: dict | None = None                            # readout and shown text before/after a move
    seconds: float = 0.0


def expects_slider(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any(c.cell_type == "code" and SLIDER_WORDS.search(c.source) for c in nb.cells)


def _accept_kernel_dialog(page) -> None:
    """JupyterLab sometimes asks which kernel to start; take the one it proposes."""
    if page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").count():
        page.click(".jp-Dialog .jp-Dialog-button.jp-mod-accept")


def _run_all(page) -> None:
    _accept_kernel_dialog(page)
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")


def open_and_run_all(context, url: str, token: str, name: str):
    """Open ``name`` in a new tab, wait until its kernel is idle, then Run > Run All Cells.

    Each tab gets a fresh workspace of its own, so it shows this notebook only.
    The toolbar's indicator says 'idle' before a kernel exists; the status
    bar's "KERNEL | Idle" is the sign that cells will really run.
    """
    page = context.new_page()
    workspace = re.sub(r"\W", "-", Path(name).stem)
    page.goto(f"{url}/lab/workspaces/{workspace}/tree/{name}?reset&token={token}")
    page.wait_for_selector(f"{PANEL} .jp-Notebook-ExecutionIndicator", timeout=90_000)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not page.evaluate(KERNEL_IDLE_JS):
        _accept_kernel_dialog(page)
        time.sleep(0.5)
    _run_all(page)
    return page


class Progress:
    """Whether Run All has finished in ``page``: no cell queued or running, the kernel idle for 2 s.

    ``done()`` looks once and returns at once (several notebooks are watched
    in turn); it raises TimeoutError after ``timeout`` seconds. If no cell has
    started ``retry_after`` seconds in, Run All is asked for once more.
    """

    def __init__(self, page, timeout: float = RUN_TIMEOUT_S, retry_after: float | None = 30):
        self.page, self.retry_after = page, retry_after
        self.start = time.monotonic()
        self.deadline, self.idle_since = self.start + timeout, None

    def done(self) -> bool:
        page, now = self.page, time.monotonic()
        _accept_kernel_dialog(page)
        state = page.evaluate(STATE_JS)
        started = not state["prompts"] or any(re.fullmatch(r"\[(\d+|\*)\]:", p) for p in state["prompts"])
        if not started and self.retry_after is not None and now - self.start > self.retry_after:
            _run_all(page)
            self.retry_after = None
        busy = any("*" in p for p in state["prompts"]) or state["status"] != "idle"
        idle = started and not busy
        self.idle_since = (self.idle_since or now) if idle else None
        if idle and (now - self.idle_since >= 2.0 or now > self.deadline):
            return True    # past the deadline but idle: it finished while the harness was busy elsewhere
        if now > self.deadline:
            raise TimeoutError(f"cells still running after {now - self.start:.0f} s: {state['prompts']}")
        return False


def wait_until_done(page, timeout: float = RUN_TIMEOUT_S, retry_after: float | None = 30) -> None:
    """Until Run All has finished in ``page`` (``Progress``)."""
    progress = Progress(page, timeout, retry_after)
    while not progress.done():
        time.sleep(0.5)


def save_and_read(page, path: Path) -> nbformat.NotebookNode:
    """Save through JupyterLab's toolbar and read back what it wrote."""
    before = path.stat().st_mtime_ns
    page.click(f"{PANEL} .jp-NotebookPanel-toolbar [data-command='docmanager:save']")
    deadline = time.monotonic() + 30
    while path.stat().st_mtime_ns == before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"JupyterLab did not save {path.name} within 30 s")
        time.sleep(0.25)
    time.sleep(0.5)  # let the write finish
    return nbformat.read(path, as_version=4)


def notebook_problems(nb) -> list[str]:
    """Error outputs and code cells that never ran, as messages (stderr output is fine)."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
        if cell.get("execution_count") is None:
            problems.append(f"cell {i} did not run")
    return problems


def move_first_slider(page, timeout: float = 30) -> dict | None:
    """Press an arrow key on the first slider; return readouts and shown text before/after."""
    if not page.locator(f"{PANEL} .jp-OutputArea-output .widget-slider").count():
        return None
    readout = page.locator(f"{PANEL} .jp-OutputArea-output .widget-slider .widget-readout").first
    before = {"readout": readout.text_content(), "shown": page.evaluate(SHOWN_JS)}
    handle = page.locator(f"{PANEL} .jp-OutputArea-output .widget-slider .noUi-handle").first
    handle.scroll_into_view_if_needed()
    for key in ("ArrowRight", "ArrowLeft", "ArrowLeft"):  # the slider may start at its maximum
        handle.focus()
        page.keyboard.press(key)
        time.sleep(0.5)
        if readout.text_content() != before["readout"]:
            break
    deadline = time.monotonic() + timeout
    while page.evaluate(SHOWN_JS) == before["shown"] and time.monotonic() < deadline:
        time.sleep(0.25)
    wait_until_done(page, timeout, retry_after=None)
    return {"before": before, "after": {"readout": readout.text_content(), "shown": page.evaluate(SHOWN_JS)}}


def finish(page, root: Path, run: LabRun, started: float) -> LabRun:
    """Run All has finished: save, check the saved file, try a slider, take screenshots."""
    stem = Path(run.name).stem
    try:
        run.seconds = time.monotonic() - started
        page.screenshot(path=str(SCREENSHOTS / f"{stem}.png"))
        run.problems += notebook_problems(save_and_read(page, root / run.name))
        run.slider = move_first_slider(page)
        if run.slider:
            page.screenshot(path=str(SCREENSHOTS / f"{stem}-slider-moved.png"))
    except Exception as err:  # noqa: BLE001 - reported by this notebook's test, the others go on
        harness_failed(page, run, err)
    finally:
        page.close()
    return run


def harness_failed(page, run: LabRun, err: Exception) -> None:
    """Report ``err`` (the harness's, not the notebook's) in ``run``, with a screenshot."""
    run.problems.append(f"browser harness: {type(err).__name__}: {str(err).splitlines()[0]}")
    page.screenshot(path=str(SCREENSHOTS / f"{Path(run.name).stem}-failed.png"))


@pytest.fixture(scope="module")
def lab_runs(lab) -> dict[str, LabRun]:
    """Every notebook, run in the browser, AT_ONCE at a time: as soon as one finishes the next
    one opens (loading JupyterLab in a tab takes seconds: it overlaps the other's run)."""
    from playwright.sync_api import sync_playwright
    url, token, root = lab
    runs = {path.name: LabRun(path.name) for path in NOTEBOOKS}
    waiting, running = list(runs.values()), []          # running: (page, run, started, progress)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            while waiting or running:
                while waiting and len(running) < AT_ONCE:
                    run = waiting.pop(0)
                    try:
                        page = open_and_run_all(context, url, token, run.name)
                        running.append((page, run, time.monotonic(), Progress(page)))
                    except Exception as err:  # noqa: BLE001
                        run.problems.append(f"browser harness: could not open and run: {type(err).__name__}: {err}")
                for entry in list(running):
                    page, run, started, progress = entry
                    try:
                        finished = progress.done()
                    except Exception as err:  # noqa: BLE001 - reported by this notebook's test
                        running.remove(entry)
                        harness_failed(page, run, err)
                        page.close()
                        continue
                    if finished:
                        running.remove(entry)
                        finish(page, root, run, started)
                time.sleep(0.5)
        finally:
            browser.close()
    (SCREENSHOTS / "browser_times.txt").write_text(
        "".join(f"{r.seconds:6.1f} s  {r.name}  {'; '.join(r.problems) or 'ok'}\n" for r in runs.values()))
    return runs


# ---------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------

LESSONS = [p.name for p in NOTEBOOKS if p.name != ERROR_FIXTURE]


def _browser(test):
    for mark in BROWSER:
        test = mark(test)
    return test


@_browser
@pytest.mark.parametrize("name", LESSONS)
def test_notebook_runs_in_jupyterlab_without_errors(lab_runs, name):
    run = lab_runs[name]
    assert not run.problems, f"{name} in JupyterLab: " + "; ".join(run.problems)


@_browser
def test_the_harness_sees_an_error(lab_runs):
    """The check above would fail: a notebook whose cell raises is reported, with the error's name."""
    problems = lab_runs[ERROR_FIXTURE].problems
    assert any("ZeroDivisionError" in p for p in problems), problems
    assert any("did not run" in p for p in problems), problems  # Run All stops at the error


@_browser
def test_the_fixture_slider_drives_its_printed_output(lab_runs):
    slider = lab_runs[SLIDER_FIXTURE].slider
    assert slider is not None, lab_runs[SLIDER_FIXTURE].problems
    assert (slider["before"]["readout"], slider["after"]["readout"]) == ("3", "4")
    assert "n squared is 9" in slider["before"]["shown"] and "n squared is 16" in slider["after"]["shown"]


@_browser
@pytest.mark.parametrize("name", LESSONS)
def test_sliders_render_and_respond(lab_runs, name):
    run, expected = lab_runs[name], expects_slider(next(p for p in NOTEBOOKS if p.name == name))
    if run.slider is None:
        assert not expected, f"{name} makes a slider, but none rendered in JupyterLab ({run.problems})"
        return  # no slider made, none rendered: that is the check for this lesson
    before, after = run.slider["before"], run.slider["after"]
    assert after["readout"] != before["readout"], f"{name}: the slider did not move ({before['readout']})"
    assert after["shown"] != before["shown"], (
        f"{name}: the slider moved ({before['readout']} -> {after['readout']}) but nothing it drives changed")


def test_without_chromium_it_skips_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        _require_chromium()


def test_without_chromium_under_ci_it_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        _require_chromium()

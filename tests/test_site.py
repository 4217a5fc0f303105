"""The course website (`make site`) as a reader meets it: built once, served, crawled in headless Chromium.

The site is built into a temporary folder by ``tools/build_site.py`` (what `make site` runs; any
Sphinx warning fails it), served by ``python -m http.server`` on 127.0.0.1 (a port the OS picks)
and crawled from its home page by Debian's ``chromium`` through Playwright. Every request to
another host is blocked and recorded: the site must work offline. Checked:

* every page loads without a console error, and every ``<img>`` loaded (naturalWidth > 0);
* every figure a lesson stores has a title, which its image on the site carries as alt text;
* no internal link is broken: every href/src of every page answers 200, and every ``#fragment``
  names an element of its page;
* each lesson shows at least as many figures as its notebook stores, its saved widgets are drawn
  and its math is typeset;
* the search page finds lesson 7 for "scatter-reduce".

The build time, the numbers of pages, images and links checked and the site's size are printed.
Without Chromium or the site's packages (requirements-site.txt) the tests skip and say why,
except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import pytest

from conftest import ROOT
from test_browser import CHROMIUM, LAUNCH_ARGS, _require_chromium

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

BUILD_LIMIT_S = 120
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SITE_PACKAGES = ("sphinx", "myst_nb", "sphinx_book_theme", "jupyter_server_mathjax")
SEARCH_TERM, SEARCH_PAGE = "scatter-reduce", "notebooks/07_ring_allreduce.html"

# What a rendered page holds, read after it loaded (and after MathJax and the widgets finished).
PAGE_JS = """() => ({
  links: Array.from(document.querySelectorAll('a[href], link[href], script[src], img[src], iframe[src]'))
              .map(e => e.href || e.src),
  images: document.images.length,
  broken_images: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)
                      .map(i => i.getAttribute('src')),
  output_images: document.querySelectorAll('.cell_output img').length,
  figure_alts: Array.from(document.querySelectorAll('.cell_output img'))
                    .map(i => i.getAttribute('alt') || '').filter(a => a.startsWith('Figure: ')).length,
  widget_views: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
  widgets_drawn: Array.from(document.querySelectorAll('.widget-subarea')).filter(e => e.children.length).length,
  math: document.querySelectorAll('.math').length,
  math_typeset: document.querySelectorAll('.MathJax, .MathJax_Display').length,
  math_errors: document.querySelectorAll('.MathJax_Error, merror').length,
  ids: Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name')),
})"""
MATHJAX_DONE_JS = """() => new Promise(done => {
  if (!window.MathJax || !window.MathJax.Hub) { done(false); return; }
  setTimeout(() => done(false), 30000);     // then the math test says what is not typeset
  window.MathJax.Hub.Queue(() => done(true));
})"""


def _require_site_packages() -> None:
    missing = []
    for name in SITE_PACKAGES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if not missing:
        return
    message = (f"the site's packages are not installed ({', '.join(missing)}): `make setup` installs "
               f"requirements-site.txt into .venv, or: pip install -r requirements-site.txt")
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true: " + message, pytrace=False)
    pytest.skip(message)


@dataclass
class Built:
    folder: Path
    seconds: float
    output: str


@dataclass
class Page:
    """One HTML page as the browser showed it."""
    url: str
    console_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)     # requests that failed or answered >= 400
    info: dict = field(default_factory=dict)            # PAGE_JS's answer


@dataclass
class Crawl:
    base: str
    pages: dict[str, Page] = field(default_factory=dict)
    links: dict[str, int] = field(default_factory=dict)          # internal url (no fragment) -> status
    fragments: set[tuple[str, str, str]] = field(default_factory=set)  # (from page, target url, fragment)
    external: set[tuple[str, str]] = field(default_factory=set)  # (page, blocked url)

    def page(self, path: str) -> Page:
        return self.pages[self.base + path]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    _require_site_packages()
    folder = tmp_path_factory.mktemp("site") / "site"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "build_site.py"), str(folder)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, f"the site build failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return Built(folder, seconds, result.stdout + result.stderr)


@pytest.fixture(scope="module")
def server(built):
    """``python -m http.server`` over the built site on 127.0.0.1; yields its base url."""
    _require_chromium()
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0",
                             "--directory", str(built.folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()          # "Serving HTTP on 127.0.0.1 port 43125 (...)"
        port = re.search(r"port (\d+)", line)
        assert port, f"http.server did not say its port: {line!r}"
        yield f"http://127.0.0.1:{port.group(1)}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def _visit(context, crawl: Crawl, url: str) -> Page:
    page, seen = context.new_page(), Page(url)
    page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.console_errors.append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: seen.failed.append(f"{r.url}: {r.failure}"))
    page.on("response", lambda r: seen.failed.append(f"{r.url}: HTTP {r.status}") if r.status >= 400 else None)

    def block_other_hosts(route):
        if route.request.url.startswith(("http:", "https:")) and not route.request.url.startswith(crawl.base):
            crawl.external.add((url, route.request.url))
            route.abort()
        else:
            route.continue_()

    page.route("**/*", block_other_hosts)
    try:
        page.goto(url, wait_until="load", timeout=60_000)
        page.wait_for_load_state("networkidle", timeout=30_000)
        page.evaluate(MATHJAX_DONE_JS)
        views = page.evaluate("() => document.querySelectorAll("
                              "'script[type=\"application/vnd.jupyter.widget-view+json\"]').length")
        if views:
            try:
                page.wait_for_function("n => document.querySelectorAll('.widget-subarea > *').length >= n",
                                       arg=views, timeout=20_000)
            except Exception:   # counted below: the test says which page did not draw its widgets
                pass
        seen.info = page.evaluate(PAGE_JS)
    finally:
        page.close()
    return seen


@pytest.fixture(scope="module")
def crawl(server) -> Crawl:
    """Every page reachable from the home page, opened in Chromium; every internal link requested."""
    from playwright.sync_api import sync_playwright

    result = Crawl(server)
    queue, queued = deque([server + "index.html"]), {server + "index.html"}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            context = browser.new_context()
            while queue:
                url = queue.popleft()
                seen = _visit(context, result, url)
                result.pages[url] = seen
                result.links[url] = 200 if seen.info else 0
                for link in seen.info.get("links", []):
                    target, fragment = urldefrag(link)
                    if not target.startswith(server):
                        continue
                    if fragment:
                        result.fragments.add((url, target, fragment))
                    if urlsplit(target).path.endswith((".html", "/")):
                        if target not in queued:
                            queued.add(target)
                            queue.append(target)
                    elif target not in result.links:
                        result.links[target] = _status(target)
        finally:
            browser.close()
    return result


def _lesson_url(path: Path) -> str:
    return f"notebooks/{path.stem}.html"


def _stored(path: Path) -> dict:
    nb = json.loads(path.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    return {"images": sum("image/png" in o.get("data", {}) for o in outputs),
            "titled": sum("image/png" in o.get("data", {}) and bool(((o.get("metadata") or {}).get("course_kit")
                                                                     or {}).get("title")) for o in outputs),
            "widget_state": bool(nb["metadata"].get("widgets")),
            "math": any(c["cell_type"] == "markdown" and re.search(r"\$[^$\s]", "".join(c["source"]))
                        for c in nb["cells"])}


def test_the_build_is_quick_and_warning_free(built, capsys):
    pages = sorted(built.folder.rglob("*.html"))
    size = sum(p.stat().st_size for p in built.folder.rglob("*") if p.is_file()) / 2**20
    with capsys.disabled():
        print(f"\nsite: built in {built.seconds:.1f} s, {len(pages)} pages, {size:.0f} MiB")
    assert built.seconds < BUILD_LIMIT_S, f"the build took {built.seconds:.0f} s (limit {BUILD_LIMIT_S} s)"
    assert "WARNING" not in built.output, built.output[-3000:]
    for path in LESSONS:
        assert (built.folder / _lesson_url(path)).exists(), f"no page for {path.name}"
    for path in sorted((ROOT / "exercises").glob("*.ipynb")):
        assert (built.folder / "exercises" / f"{path.stem}.html").exists(), f"no page for exercises/{path.name}"
        assert (built.folder / "_sources" / "exercises" / path.name).read_bytes() == path.read_bytes(), (
            f"exercises/{path.name}: the download is not the student's notebook")
    for doc in ("README", "docs/instructors", "docs/benchmarks", "docs/multinode"):
        assert (built.folder / f"{doc}.html").exists(), f"no page for {doc}.md"


def test_the_crawl_reached_every_page(built, crawl, capsys):
    reached = {urlsplit(u).path.lstrip("/") for u in crawl.pages}
    built_pages = {p.relative_to(built.folder).as_posix() for p in built.folder.rglob("*.html")}
    built_pages = {p for p in built_pages if not p.startswith("_static/")}   # the theme's template macros
    with capsys.disabled():
        print(f"\nsite crawl: {len(crawl.pages)} pages, {sum(p.info.get('images', 0) for p in crawl.pages.values())} "
              f"images, {len(crawl.links)} internal links and {len(crawl.fragments)} #fragments checked")
    assert built_pages - reached == set(), f"pages no link leads to: {sorted(built_pages - reached)}"


def test_every_page_loads_without_a_console_error(crawl):
    errors = {url: page.console_errors + page.failed for url, page in crawl.pages.items()
              if page.console_errors or page.failed}
    assert not errors, json.dumps(errors, indent=1)[:4000]


def test_nothing_is_loaded_from_another_host(crawl):
    assert not crawl.external, f"requests to other hosts (blocked): {sorted(crawl.external)[:20]}"


def test_every_image_loaded(crawl):
    broken = {url: page.info["broken_images"] for url, page in crawl.pages.items() if page.info["broken_images"]}
    assert not broken, broken


def test_no_internal_link_is_broken(crawl):
    broken = {url: status for url, status in crawl.links.items() if status != 200}
    assert not broken, broken
    missing = sorted((src, f"{target}#{fragment}") for src, target, fragment in crawl.fragments
                     if target in crawl.pages and fragment not in crawl.pages[target].info["ids"])
    assert not missing, f"links to an anchor that is not on the page: {missing[:20]}"


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_each_lesson_shows_its_figures_widgets_and_math(crawl, lesson):
    stored, shown = _stored(lesson), crawl.page(_lesson_url(lesson)).info
    assert shown["output_images"] >= stored["images"], (
        f"{lesson.name} stores {stored['images']} figures; its page shows {shown['output_images']}")
    assert stored["titled"] == stored["images"], (
        f"{lesson.name}: {stored['images'] - stored['titled']} of its {stored['images']} figures carry no title "
        f"(course_lib.viz records each shown figure's titles; re-run the notebook: make notebooks)")
    assert shown["figure_alts"] >= stored["titled"], (
        f"{lesson.name}: {shown['figure_alts']} of its {stored['titled']} titled figures have their title as alt text")
    if stored["widget_state"]:
        assert shown["widget_views"] and shown["widgets_drawn"] >= shown["widget_views"], (
            f"{lesson.name}: {shown['widgets_drawn']} of {shown['widget_views']} saved widgets drawn")
    if stored["math"]:
        assert shown["math_typeset"] and not shown["math_errors"], (
            f"{lesson.name}: {shown['math']} formulas, {shown['math_typeset']} typeset, {shown['math_errors']} errors")


def test_search_finds_lesson_7(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            page.goto(server + "search.html", wait_until="load")
            box = page.locator("input[name='q']:visible").first   # the search page's own box
            box.fill(SEARCH_TERM)
            box.press("Enter")
            page.wait_for_function("() => /found \\d+ page/i.test("
                                   "(document.querySelector('#search-results') || {}).textContent || '')",
                                   timeout=30_000)
            hits = page.evaluate("() => Array.from(document.querySelectorAll('#search-results ul.search li a'))"
                                 ".map(a => a.getAttribute('href'))")
        finally:
            browser.close()
    assert any(h.split("?")[0].split("#")[0].endswith(SEARCH_PAGE) for h in hits), (
        f"searching {SEARCH_TERM!r} did not list {SEARCH_PAGE}: {hits}")

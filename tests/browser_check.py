"""Look at a rendered Jupyter Book the way a reader does: in headless Chromium, page by page.

For each page it reports, as plain sentences, everything a reader would notice:

* error outputs of a cell (myst-nb's ``.output.traceback``, or "Traceback (most recent call last)" /
  papermill's "An Exception was encountered" anywhere in the page's text);
* images that did not load (``complete && naturalWidth > 0`` fails);
* math that MathJax did not typeset (a ``.math`` element without an ``mjx-container``, or TeX errors);
* links to pages of the book that do not answer HTTP 200, and sidebar / previous / next links that do not
  follow the table of contents;
* errors in the browser console (failed requests, exceptions in scripts);

and saves a screenshot of the page. The book is served by Python's ``http.server`` from a thread.
Chromium and chromedriver are the distribution's (``.ci/install-browser.sh``); Selenium drives them
through the given chromedriver, so nothing is downloaded.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path(os.environ.get("MEDST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("MEDST_CHROMEDRIVER", "/usr/bin/chromedriver"))
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,1600",
)
PAGE_TIMEOUT_S = 60
# Console messages that are no fault of the book: the browser's own favicon request; sphinx-book-theme 1.x
# and sphinx-thebe 0.3 both declare THEBE_JS_URL (harmless: thebe starts only on a click); pydata-sphinx-theme
# complains about an unset colour mode in a fresh browser profile and falls back to "auto".
IGNORED_CONSOLE = ("favicon.ico", "Identifier 'THEBE_JS_URL' has already been declared", "Got invalid theme mode")


class ExecutedChapters:
    """The book's chapters, each executed at most once per test session, into one folder.

    ``run(notebook)`` executes a chapter with :func:`medst.book.build.run_chapter` (profile ``ci``, one shared
    data folder and working folder) unless this session already did, and returns (output notebook,
    seconds); a chapter that failed raises its :class:`medst.book.build.ChapterError` again. ``out`` holds the
    executed notebooks at their paths relative to the repository, as ``medst.book.build.html(out, ...)`` expects,
    so test_notebooks.py and the browser test share one execution of each chapter.
    """

    def __init__(self, out: Path, data_dir: Path, cwd: Path, profile: str = "ci") -> None:
        self.out, self.data_dir, self.cwd, self.profile = Path(out), Path(data_dir), Path(cwd), profile
        self._results: dict[Path, object] = {}

    def run(self, notebook: Path) -> tuple[Path, float]:
        from medst.book.build import ROOT, ChapterError, run_chapter

        notebook = Path(notebook).resolve()
        if notebook not in self._results:
            target = self.out / notebook.relative_to(ROOT)
            for folder in (self.data_dir, self.cwd):
                folder.mkdir(parents=True, exist_ok=True)
            try:
                seconds = run_chapter(notebook, target, profile=self.profile, data_dir=self.data_dir, cwd=self.cwd)
                self._results[notebook] = (target, seconds)
            except ChapterError as err:
                self._results[notebook] = err
        result = self._results[notebook]
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[return-value]


def browser_missing() -> str | None:
    """Why the browser check cannot run here, or None when it can."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return (
            f"{' and '.join(missing)} not found: run .ci/install-browser.sh as root "
            "(Debian packages chromium and chromium-driver)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the Python package selenium is not installed (pip install selenium)"
    return None


def mathjax_es5() -> Path | None:
    """MathJax 3's ``es5`` folder as the package django-static-mathjax ships it, or None."""
    import importlib.util

    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"
    return folder if (folder / "tex-mml-chtml.js").is_file() else None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) from a thread; yields the base URL ending in '/'."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium driven by Selenium through the local chromedriver, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    reason = browser_missing()
    if reason:
        raise RuntimeError(f"tests/browser_check.py: {reason}")
    profile = tempfile.mkdtemp(prefix="medst-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT_S)
        driver.set_script_timeout(PAGE_TIMEOUT_S)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# Runs in the page: waits for images and MathJax, then describes what is on screen.
_INSPECT_JS = r"""
const done = arguments[arguments.length - 1];
(async () => {
  const images = Array.from(document.images);
  images.forEach(img => { if (img.loading === 'lazy') img.loading = 'eager'; });
  await Promise.all(images.map(img => img.complete ? null : new Promise(resolve => {
    img.addEventListener('load', resolve); img.addEventListener('error', resolve);
    setTimeout(resolve, 20000);
  })));
  let mathjax = null;
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    try { await window.MathJax.startup.promise; mathjax = String(window.MathJax.version); }
    catch (err) { mathjax = 'failed: ' + err; }
  }
  const text = el => (el.innerText || el.textContent || '').trim().slice(0, 300);
  const tail = el => (el.innerText || el.textContent || '').trim().slice(-300);
  const mathElements = Array.from(document.querySelectorAll('.math'));
  const mathScripts = Array.from(document.scripts).map(s => s.src).filter(src => /mathjax/i.test(src));
  const sameOrigin = a => { try { return new URL(a.href).origin === location.origin; } catch (e) { return false; } };
  const hrefs = sel => Array.from(document.querySelectorAll(sel)).filter(sameOrigin).map(a => a.href.split('#')[0]);
  done({
    title: document.title,
    errorOutputs: Array.from(document.querySelectorAll(
        '.output.traceback, .output.error, .output_error, div.traceback')).map(tail),
    bodyText: document.body ? document.body.innerText : '',
    images: images.map(img => ({src: img.currentSrc || img.src, ok: img.complete && img.naturalWidth > 0})),
    mathjax: mathjax,
    mathScripts: mathScripts,
    math: mathElements.length,
    mathRendered: mathElements.filter(el => el.querySelector('mjx-container')).length,
    mathUnrendered: mathElements.filter(el => !el.querySelector('mjx-container')).map(text).slice(0, 3),
    mathErrors: Array.from(document.querySelectorAll('mjx-merror'))
      .map(el => el.getAttribute('data-mjx-error') || text(el)),
    links: hrefs('a[href]'),
    toc: hrefs('.bd-sidebar-primary nav a.reference.internal, nav.bd-docs-nav a.reference.internal'),
    prev: hrefs('.prev-next-area a.left-prev'),
    next: hrefs('.prev-next-area a.right-next'),
  });
})();
"""


@dataclass
class PageReport:
    """What one page showed: its problems (empty when it renders cleanly) and what was counted."""

    page: str
    title: str = ""
    problems: list[str] = field(default_factory=list)
    images: int = 0
    math: int = 0
    links: int = 0
    screenshot: Path | None = None

    def summary(self) -> str:
        state = "ok" if not self.problems else f"{len(self.problems)} problem(s)"
        return (
            f"{self.page}: {state}; {self.images} image(s), {self.math} math element(s), "
            f"{self.links} internal link(s); screenshot {self.screenshot}"
        )


def _status(url: str, cache: dict[str, int]) -> int:
    """HTTP status of a GET of ``url`` (cached)."""
    if url not in cache:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                cache[url] = response.status
        except urllib.error.HTTPError as err:
            cache[url] = err.code
        except OSError:
            cache[url] = -1
    return cache[url]


def _canonical(url: str) -> str:
    """A page's URL without fragment and with 'dir/' and 'dir/index.html' the same."""
    url = url.split("#")[0]
    return url[: -len("index.html")] if url.endswith("/index.html") else url


def check_page(
    driver,
    base_url: str,
    page: str,
    screenshot_dir: Path | None = None,
    order: list[str] | None = None,
    status_cache: dict[str, int] | None = None,
) -> PageReport:
    """Load ``base_url + page`` and report its problems.

    Args:
        page: path of the page relative to the book's root, e.g. "book/06_temporal.html".
        order: the book's pages in table-of-contents order; if given and ``page`` is one of them, the sidebar
            must link every one of them and the previous / next links must point to the neighbours of ``page``.
    """
    status_cache = {} if status_cache is None else status_cache
    report = PageReport(page)
    url = urllib.parse.urljoin(base_url, page)
    if _status(url, status_cache) != 200:
        report.problems.append(f"the page itself answers HTTP {_status(url, status_cache)}")
        return report
    driver.get_log("browser")  # forget messages of earlier pages
    driver.get(url)
    info = driver.execute_async_script(_INSPECT_JS)
    report.title = info["title"]

    for output in info["errorOutputs"]:
        lines = [line for line in output.splitlines() if line.strip()]
        report.problems.append(f"error output in a cell: {lines[-1] if lines else '(empty)'}")
    for marker in ("Traceback (most recent call last)", "An Exception was encountered at"):
        if marker in info["bodyText"] and not info["errorOutputs"]:
            report.problems.append(f"the page shows {marker!r}")

    report.images = len(info["images"])
    for image in info["images"]:
        if not image["ok"]:
            report.problems.append(f"image did not load: {image['src'][:200]}")

    report.math = info["math"]
    if info["math"]:
        if not info["mathjax"]:
            scripts = ", ".join(info["mathScripts"]) or "no MathJax script on the page"
            report.problems.append(
                f"{info['math']} math element(s) but MathJax did not start (script: {scripts}; "
                "a CDN address cannot load offline: serve MathJax locally)"
            )
        elif not str(info["mathjax"]).startswith("3"):
            report.problems.append(f"MathJax {info['mathjax']}: expected version 3")
        if info["mathRendered"] < info["math"]:
            report.problems.append(
                f"{info['math'] - info['mathRendered']} of {info['math']} math element(s) not "
                f"typeset, e.g. {info['mathUnrendered']}"
            )
    for error in info["mathErrors"]:
        report.problems.append(f"TeX error in the math: {error}")

    links = sorted(set(info["links"]))
    report.links = len(links)
    for link in links:
        code = _status(link, status_cache)
        if code != 200:
            report.problems.append(f"link to {link} answers HTTP {code}")
    if order is not None and page in order:
        here = order.index(page)
        expected = [_canonical(urllib.parse.urljoin(base_url, p)) for p in order]
        toc = {_canonical(link) for link in info["toc"]}
        if not info["toc"]:
            report.problems.append("no table of contents in the sidebar")
        else:
            missing = [p for p, u in zip(order, expected) if u not in toc and p != page]
            if missing:
                report.problems.append(f"the sidebar does not link {missing}")
        for name, found, want in (
            ("previous", info["prev"], expected[here - 1] if here > 0 else None),
            ("next", info["next"], expected[here + 1] if here + 1 < len(order) else None),
        ):
            got = _canonical(found[0]) if found else None
            if want is not None and got != want:
                report.problems.append(f"the {name} link points to {got}, expected {want}")

    for entry in driver.get_log("browser"):
        message = entry.get("message", "")
        if entry.get("level") == "SEVERE" and not any(s in message for s in IGNORED_CONSOLE):
            report.problems.append(f"browser console: {message[:300]}")

    if screenshot_dir is not None:
        screenshot_dir.mkdir(parents=True, exist_ok=True)
        target = screenshot_dir / (page.replace("/", "__").removesuffix(".html") + ".png")
        driver.save_screenshot(str(target))
        report.screenshot = target
    return report


def check_book(
    html_dir: Path, pages: list[str], screenshot_dir: Path | None = None, order: list[str] | None = None
) -> list[PageReport]:
    """Serve ``html_dir``, open each of ``pages`` in one headless Chromium, and report on each."""
    html_dir = Path(html_dir)
    if not (html_dir / "index.html").exists():
        raise FileNotFoundError(f"tests/browser_check.py: {html_dir} has no index.html; build the book first")
    cache: dict[str, int] = {}
    with serve(html_dir) as base_url, chromium() as driver:
        return [check_page(driver, base_url, page, screenshot_dir, order, cache) for page in pages]

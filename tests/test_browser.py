"""The rendered book in a real browser: every chapter loads without error outputs, broken images,
untypeset math or dead navigation (tests/browser_check.py does the looking).

Needs /usr/bin/chromium and /usr/bin/chromedriver (``.ci/install-browser.sh``) and the Python package
``selenium``; without them the tests skip, unless ``MEDST_REQUIRE_BROWSER=1`` (CI) makes that a failure.
Screenshots go to ``$MEDST_SCREENSHOTS`` (default: a pytest temporary folder, printed).
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from browser_check import browser_missing, check_book, mathjax_es5

MATHJAX_PARTS = ("tex-mml-chtml.js", "input", "output/chtml", "output/chtml.js", "ui", "a11y", "sre")


def require_browser() -> None:
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("MEDST_REQUIRE_BROWSER"):
        pytest.fail(f"MEDST_REQUIRE_BROWSER is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    folder = os.environ.get("MEDST_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def assert_clean(reports) -> None:
    for report in reports:
        print(report.summary())
    problems = [f"{r.page}: {p}" for r in reports for p in r.problems]
    assert not problems, "the rendered book has problems:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------- the checker itself
def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_book(src: Path) -> None:
    """A three-page Jupyter Book: a text page with math, a clean notebook, a notebook with faults."""
    es5 = mathjax_es5()
    if es5 is None:
        pytest.fail("MathJax 3 is not installed: pip install django-static-mathjax", pytrace=False)
    for part in MATHJAX_PARTS:
        source, target = es5 / part, src / "_mathjax" / "mathjax" / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            import shutil

            shutil.copytree(source, target)
        else:
            target.write_bytes(source.read_bytes())
    (src / "_config.yml").write_text(
        "title: tiny\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: 'off'\n"
        "parse:\n  myst_enable_extensions: [dollarmath, amsmath]\n"
        "sphinx:\n  config:\n    mathjax_path: mathjax/tex-mml-chtml.js\n    html_static_path: [_mathjax]\n"
    )
    (src / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n- file: good\n- file: bad\n")
    (src / "intro.md").write_text(
        "# Intro\n\nInline math $e^{i\\pi} + 1 = 0$ and a display:\n\n$$\\mathcal{L} = -\\sum_t \\log p_t$$\n"
    )
    v4 = nbformat.v4
    image = base64.b64encode(png_bytes()).decode()
    good = v4.new_notebook(
        cells=[
            v4.new_markdown_cell("# Good\n\nA loss $\\mathcal{L}_\\text{FMC}$.\n"),
            v4.new_code_cell(
                "plot()",
                outputs=[
                    v4.new_output("display_data", data={"image/png": image, "text/plain": "<Figure>"}),
                    v4.new_output("stream", name="stderr", text="100%|####| 3/3\n"),
                ],
            ),
        ]
    )
    bad = v4.new_notebook(
        cells=[
            v4.new_markdown_cell(
                "# Bad\n\n<a href=\"nowhere.html\">a dead link</a>\n\n<img src=\"no-such-image.png\" alt=\"missing\">\n"
            ),
            v4.new_code_cell(
                "1 / 0",
                outputs=[
                    v4.new_output(
                        "error",
                        ename="ZeroDivisionError",
                        evalue="division by zero",
                        traceback=["Traceback (most recent call last)", "ZeroDivisionError: division by zero"],
                    )
                ],
            ),
        ]
    )
    nbformat.write(good, src / "good.ipynb")
    nbformat.write(bad, src / "bad.ipynb")


def build_tiny_book(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    tiny_book(src)
    cli = "import sys; from jupyter_book.cli.main import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", cli, "build", str(src), "--path-output", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    html = tmp_path / "_build" / "html"
    (html / "no-mathjax.html").write_text(  # math that nothing typesets
        "<html><head><title>x</title></head><body><span class=\"math\">\\(x^2\\)</span></body></html>"
    )
    return html


def test_checker_sees_what_a_reader_sees(tmp_path, screenshot_dir):
    """Clean pages pass; each planted fault (traceback, missing image, dead link, untypeset math) is caught."""
    require_browser()
    html = build_tiny_book(tmp_path)
    order = ["intro.html", "good.html", "bad.html"]
    reports = check_book(html, order + ["no-mathjax.html"], screenshot_dir / "tiny", order=order)
    intro, good, bad, no_math = reports
    assert_clean([intro, good])
    assert intro.math == 2 and good.math == 1 and good.images == 1
    assert intro.screenshot.stat().st_size > 1000
    text = "\n".join(bad.problems)
    assert "error output in a cell" in text and "ZeroDivisionError" in text, text
    assert "image did not load" in text and "no-such-image.png" in text, text
    assert "nowhere.html answers HTTP 404" in text, text
    assert any("MathJax did not start" in p for p in no_math.problems), no_math.problems

    # the navigation check notices a wrong order
    shuffled = check_book(html, ["good.html"], order=["good.html", "intro.html", "bad.html"])[0]
    assert any("previous link" in p or "next link" in p for p in shuffled.problems), shuffled.problems


# --------------------------------------------------------------------------- the real book
@pytest.fixture(scope="session")
def book_html(request, tmp_path_factory) -> Path:
    """The book rendered from the chapters executed under the ``ci`` profile in this session."""
    from medst.book.build import ChapterError, chapters, html

    require_browser()  # before spending minutes on the chapters
    try:
        executed = request.getfixturevalue("executed_book")
    except pytest.FixtureLookupError:
        from browser_check import ExecutedChapters

        root = tmp_path_factory.mktemp("executed-book")
        executed = ExecutedChapters(root / "executed", data_dir=root / "data", cwd=root / "work")
    failed = []
    for notebook in chapters():
        try:
            executed.run(notebook)
        except ChapterError as err:
            failed.append(str(err))
    if failed:
        pytest.fail(
            "cannot look at the rendered book, chapters failed to run:\n  " + "\n  ".join(failed), pytrace=False
        )
    out = tmp_path_factory.mktemp("book-html")
    previous = os.environ.get("MEDST_MATHJAX")
    os.environ["MEDST_MATHJAX"] = "local"  # CI has no internet: MathJax must come from the book itself
    try:
        return html(executed.out, out)
    except subprocess.CalledProcessError as err:
        pytest.fail(f"rendering the book failed: {err}", pytrace=False)
    finally:
        if previous is None:
            os.environ.pop("MEDST_MATHJAX", None)
        else:
            os.environ["MEDST_MATHJAX"] = previous


@pytest.mark.notebooks
def test_rendered_book_in_browser(book_html, screenshot_dir):
    """Every page of the table of contents renders cleanly in Chromium and links to its neighbours."""
    require_browser()
    from medst.book.build import toc_entries

    pages = [f"{entry}.html" for entry in toc_entries()]
    reports = check_book(book_html, pages, screenshot_dir / "book", order=pages)
    print(f"screenshots in {screenshot_dir / 'book'}")
    assert_clean(reports)
    assert (book_html / "index.html").exists()

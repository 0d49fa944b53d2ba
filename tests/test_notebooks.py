"""Execute every chapter listed in _toc.yml under the ``ci`` profile; fail naming the chapter and cell.

Chapters run through the session fixture ``executed_book`` (tests/conftest.py): each at most once per
session, into one folder that tests/test_browser.py renders and looks at in a browser.
"""

from __future__ import annotations

import pytest

from medst.book.build import ROOT, ChapterError, chapters, execution_order

CHAPTERS = execution_order(chapters())  # chapter 7 trains the model chapters 5, 6, 8, 9 load


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_under_ci(notebook, executed_book):
    try:
        out, seconds = executed_book.run(notebook)
    except ChapterError as err:
        pytest.fail(str(err), pytrace=False)
    print(f"{notebook.name}: {seconds:.1f} s")
    assert out.exists()


def test_toc_lists_existing_files():
    from medst.book.build import toc_entries

    for entry in toc_entries():
        assert (ROOT / f"{entry}.ipynb").exists() or (ROOT / f"{entry}.md").exists(), entry

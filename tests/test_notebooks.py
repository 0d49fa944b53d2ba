"""Execute every chapter listed in _toc.yml under the ``ci`` profile; fail naming the chapter and cell."""
from __future__ import annotations

import pytest

from medst.book import ROOT, ChapterError, chapters, run_chapter

CHAPTERS = chapters()


@pytest.fixture(scope="session")
def book_data(tmp_path_factory):
    """One data folder shared by all chapters, as in a real build (chapters share only files)."""
    return tmp_path_factory.mktemp("book-data")


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_under_ci(notebook, book_data, tmp_path):
    out = tmp_path / notebook.name
    try:
        seconds = run_chapter(notebook, out, profile="ci", data_dir=book_data, cwd=tmp_path)
    except ChapterError as err:
        pytest.fail(str(err), pytrace=False)
    print(f"{notebook.name}: {seconds:.1f} s")
    assert out.exists()


def test_toc_lists_existing_files():
    from medst.book import toc_entries

    for entry in toc_entries():
        assert (ROOT / f"{entry}.ipynb").exists() or (ROOT / f"{entry}.md").exists(), entry

"""The book's tooling: a chapter's setup, the book's build, the students' edition and the exercises.

A chapter starts with::

    from medst.book import setup

    ctx = setup(profile, data_dir, seed, device)

Modules:

* ``chapter.py``: :func:`setup` and :class:`Chapter`, a chapter's data, runs (the book model) and device;
* ``build.py``: ``python -m medst.book execute|html`` (``__main__.py``): every chapter executed with papermill,
  then rendered with Jupyter Book;
* ``student.py``: ``python -m medst.book.student --src book --out DIR``, the students' edition (every solution
  replaced by its stub, outputs cleared);
* ``stubs.py``: the stub of a solution (imports, signatures and docstrings kept, bodies replaced by a raise);
* ``exercises/``: the exercises of chapters 1-11, their checkers and solutions
  (``python -m medst.book.exercises append book/06_temporal.ipynb``);
* ``grade.py``: ``medst grade``: a student's notebook (or a class's folder) executed in a child process with a
  time limit, one row of points per exercise.
"""

from medst.book.chapter import Chapter, setup

__all__ = ["Chapter", "setup"]

"""The students' edition of the book: every solution replaced by its stub.

``python -m medst.book.student --src book --out student`` copies the folder ``book`` to ``student`` (figures and
text pages as they are) and rewrites each notebook:

* a code cell tagged ``solution`` gets the stub stored in its ``metadata.medst.stub`` (written by
  :func:`medst.book.exercises.exercise_cells`), or, without one, a stub made from the solution itself: its
  imports, constants and the signatures and docstrings of its functions and classes, each body replaced by
  ``raise NotImplementedError("exercise: ...")`` (:func:`medst.book.stubs.stub_from_solution`); its tags
  become ``exercise``;
* every output and execution count is cleared, so no solution leaks through what it printed;
* the ``check`` cells stay: a checker reports a stub as "not implemented yet" instead of failing, so the
  students' notebook runs top to bottom before any exercise is done.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
from pathlib import Path

import nbformat

from medst.book.stubs import stub_from_solution

__all__ = ["stub_from_solution", "student_notebook", "write_student_edition", "main"]

SOLUTION_TAG, STUDENT_TAG = "solution", "exercise"
HIDING_TAGS = {"hide-input", "hide-cell", "remove-input", "remove-cell"}


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def student_notebook(nb, *, name: str = "notebook"):
    """A copy of notebook ``nb`` with each ``solution`` cell replaced by its stub and all outputs cleared.

    Returns (the new notebook, the number of stubbed cells).
    """
    nb = copy.deepcopy(nb)
    stubbed = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        cell.outputs = []
        cell.execution_count = None
        for key in ("execution", "papermill"):
            cell.metadata.pop(key, None)
        tags = _tags(cell)
        if SOLUTION_TAG not in tags:
            continue
        medst_meta = cell.metadata.get("medst", {})
        stub = medst_meta.pop("stub", None)
        if stub is None:
            stub = stub_from_solution(cell.source, where=f"{name}, cell {index}")
        cell.source = stub.rstrip("\n")
        cell.metadata["tags"] = [t for t in tags if t != SOLUTION_TAG and t not in HIDING_TAGS] + [STUDENT_TAG]
        stubbed += 1
    nb.metadata.pop("papermill", None)
    return nb, stubbed


def write_student_edition(src: Path, out: Path) -> dict[Path, int]:
    """Copy ``src`` to ``out`` with every notebook made into its students' version.

    Returns {notebook path in ``out``: number of stubbed cells}.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"medst/book/student.py: source folder {src} does not exist")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ValueError(f"medst/book/student.py: the output folder {out} must lie outside the source {src}")
    ignore = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.ipynb")
    shutil.copytree(src, out, ignore=ignore, dirs_exist_ok=True)
    written: dict[Path, int] = {}
    for path in sorted(src.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as err:  # nbformat raises several kinds on a broken file
            raise ValueError(f"medst/book/student.py: cannot read notebook {path}: {err}") from err
        student, stubbed = student_notebook(nb, name=str(path))
        target = out / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(student, target)
        written[target] = stubbed
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m medst.book.student", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", type=Path, default=Path("book"), help="the book's folder (default: book)")
    parser.add_argument("--out", type=Path, default=Path("student"), help="where to write (default: student)")
    args = parser.parse_args(argv)
    try:
        written = write_student_edition(args.src, args.out)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    for path, stubbed in written.items():
        print(f"{path}: {stubbed} exercise(s) stubbed")
    print(f"students' edition of {len(written)} notebook(s) written to {args.out}")


if __name__ == "__main__":
    main()

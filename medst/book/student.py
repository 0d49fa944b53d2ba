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
  students' notebook runs top to bottom before any exercise is done;
* nbgrader's cell metadata (``metadata.nbgrader``, written by the exercises) is kept, and the cells it locks
  (prompts, checks) are made read-only and undeletable, as ``nbgrader generate_assignment`` would make them.

With ``--nbgrader``, each stub's ``raise NotImplementedError(...)`` line is put between nbgrader's
``### BEGIN SOLUTION`` and ``### END SOLUTION`` markers: the edition can then be nbgrader's source version, and
``nbgrader generate_assignment`` keeps the stubs' imports, signatures and docstrings (without markers it would
replace each solution cell as a whole). ``medst grade`` grades the students' notebooks without nbgrader.
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import sys
from pathlib import Path

import nbformat

from medst.book.stubs import stub_from_solution

__all__ = ["stub_from_solution", "nbgrader_markers", "student_notebook", "write_student_edition", "main"]

SOLUTION_TAG, STUDENT_TAG = "solution", "exercise"
HIDING_TAGS = {"hide-input", "hide-cell", "remove-input", "remove-cell"}
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"  # nbgrader's solution region
_STUB_RAISE = re.compile(r"^(\s*)raise NotImplementedError\(.*\)\s*$")


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def nbgrader_markers(stub: str) -> str:
    """``stub`` with each ``raise NotImplementedError(...)`` line between nbgrader's solution markers."""
    lines = []
    for line in stub.splitlines():
        match = _STUB_RAISE.match(line)
        if match:
            indent = match.group(1)
            lines += [indent + BEGIN_SOLUTION, line, indent + END_SOLUTION]
        else:
            lines.append(line)
    return "\n".join(lines) + ("\n" if stub.endswith("\n") else "")


def _lock(cell) -> None:
    """Make a cell that nbgrader's metadata locks read-only and undeletable (nbgrader's LockCells does the same)."""
    grader = cell.get("metadata", {}).get("nbgrader")
    if isinstance(grader, dict) and grader.get("locked"):
        cell.metadata["editable"] = False
        cell.metadata["deletable"] = False


def student_notebook(nb, *, name: str = "notebook", nbgrader: bool = False):
    """A copy of notebook ``nb`` with each ``solution`` cell replaced by its stub and all outputs cleared.

    Cells locked by their nbgrader metadata become read-only; with ``nbgrader``, the stubs' bodies are marked as
    nbgrader's solution regions (:func:`nbgrader_markers`).
    Returns (the new notebook, the number of stubbed cells).
    """
    nb = copy.deepcopy(nb)
    stubbed = 0
    for index, cell in enumerate(nb.cells):
        _lock(cell)
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
        cell.source = (nbgrader_markers(stub) if nbgrader else stub).rstrip("\n")
        cell.metadata["tags"] = [t for t in tags if t != SOLUTION_TAG and t not in HIDING_TAGS] + [STUDENT_TAG]
        stubbed += 1
    nb.metadata.pop("papermill", None)
    return nb, stubbed


def write_student_edition(src: Path, out: Path, *, nbgrader: bool = False) -> dict[Path, int]:
    """Copy ``src`` to ``out`` with every notebook made into its students' version (``nbgrader``: the stubs
    marked as nbgrader's solution regions, :func:`student_notebook`).

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
        student, stubbed = student_notebook(nb, name=str(path), nbgrader=nbgrader)
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
    parser.add_argument(
        "--nbgrader",
        action="store_true",
        help="mark each stub's body as nbgrader's solution region (for nbgrader generate_assignment)",
    )
    args = parser.parse_args(argv)
    try:
        written = write_student_edition(args.src, args.out, nbgrader=args.nbgrader)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    for path, stubbed in written.items():
        print(f"{path}: {stubbed} exercise(s) stubbed")
    print(f"students' edition of {len(written)} notebook(s) written to {args.out}")


if __name__ == "__main__":
    main()

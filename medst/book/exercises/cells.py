"""The exercise cells a chapter ends with, and the command line ``python -m medst.book.exercises``.

:func:`exercise_cells` makes, per exercise, a markdown prompt, the solution (a code cell tagged ``solution``
whose metadata carries the student's stub) and the check (a code cell tagged ``check``);
:func:`append_exercises` (re)writes them at the end of a notebook::

    python -m medst.book.exercises append book/06_temporal.ipynb
    python -m medst.book.exercises list
    python -m medst.book.exercises check      # every solution module through its checker
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medst.book.exercises.registry import EXERCISES, chapter_key

HEADING = (
    "## Exercises\n\nWrite each function in the cell below its text, then run the check cell after it. "
    "In the book, the solution is hidden behind the *show* toggle; the students' edition "
    "(`python -m medst.book.student`) has a stub there instead.\n"
)


NBGRADER_SCHEMA = 3  # the version of nbgrader's cell metadata written here


def nbgrader_metadata(grade_id: str, *, solution: bool = False, grade: bool = False, points: int = 0) -> dict:
    """nbgrader's ``metadata.nbgrader`` of an exercise cell (schema 3).

    A solution cell is nbgrader's "autograded answer" (``solution``, editable), a check cell its "autograder
    tests" (``grade``, ``locked``, worth ``points``), and every other exercise cell "read-only" (``locked``).
    ``grade_id`` is the cell's id, unique in the notebook.
    """
    meta = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": not solution,
        "schema_version": NBGRADER_SCHEMA,
        "solution": solution,
        "task": False,
    }
    if grade:
        meta["points"] = points
    return meta


def exercise_cells(chapter: str) -> list:
    """The cells a chapter ends with: a heading, then per exercise a prompt (markdown), the solution (code,
    tagged ``solution`` and ``hide-input``; ``metadata.medst.stub`` holds the student's stub) and the check
    (code, tagged ``check``). Every cell has ``metadata.medst.exercise``, a stable id and nbgrader's metadata
    (:func:`nbgrader_metadata`: the check cell is worth the exercise's points).
    """
    import nbformat

    key = chapter_key(chapter)
    v4 = nbformat.v4
    heading_id = f"ex-{key.replace('_', '-')}"
    cells = [
        v4.new_markdown_cell(
            HEADING,
            id=heading_id,
            metadata={
                "tags": ["exercise"],
                "medst": {"exercise": "heading"},
                "nbgrader": nbgrader_metadata(heading_id),
            },
        )
    ]
    for ex in EXERCISES[key]:
        prompt_id, solution_id, check_id = (f"ex-{ex.key}-{part}" for part in ("prompt", "solution", "check"))
        cells.append(
            v4.new_markdown_cell(
                ex.prompt_md,
                id=prompt_id,
                metadata={
                    "tags": ["exercise"],
                    "medst": {"exercise": ex.key},
                    "nbgrader": nbgrader_metadata(prompt_id),
                },
            )
        )
        cells.append(
            v4.new_code_cell(
                ex.solution_code.rstrip("\n"),
                id=solution_id,
                metadata={
                    "tags": ["solution", "hide-input"],
                    "medst": {"exercise": ex.key, "stub": ex.stub_code.rstrip("\n")},
                    "nbgrader": nbgrader_metadata(solution_id, solution=True),
                },
            )
        )
        cells.append(
            v4.new_code_cell(
                ex.check_code.rstrip("\n"),
                id=check_id,
                metadata={
                    "tags": ["check"],
                    "medst": {"exercise": ex.key},
                    "nbgrader": nbgrader_metadata(check_id, grade=True, points=ex.points),
                },
            )
        )
    return cells


def is_exercise_cell(cell) -> bool:
    """True for a cell that :func:`exercise_cells` made."""
    return "exercise" in cell.get("metadata", {}).get("medst", {})


def append_exercises(nb, chapter: str):
    """Replace the exercise cells of notebook ``nb`` (an nbformat node) by fresh ones at its end; returns nb."""
    nb.cells = [cell for cell in nb.cells if not is_exercise_cell(cell)]
    cells = exercise_cells(chapter)
    if (nb.nbformat, nb.get("nbformat_minor", 0)) < (4, 5):
        for cell in cells:
            cell.pop("id", None)
    nb.cells.extend(cells)
    return nb


def main(argv: list[str] | None = None) -> None:
    """``python -m medst.book.exercises list`` | ``append NOTEBOOK...`` | ``check`` (grade the solutions)."""
    parser = argparse.ArgumentParser(
        prog="python -m medst.book.exercises", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the exercises")
    p = sub.add_parser("append", help="(re)write the exercise cells at the end of chapter notebooks")
    p.add_argument("notebooks", nargs="+", type=Path)
    sub.add_parser("check", help="run every solution through its checker")
    args = parser.parse_args(argv)
    if args.command == "list":
        for chapter, exercises in EXERCISES.items():
            for ex in exercises:
                print(f"{chapter:22s} {ex.number:5s} {ex.key:16s} {ex.title}")
    elif args.command == "append":
        import nbformat

        for path in args.notebooks:
            if not path.is_file():
                sys.exit(f"error: {path}: no such notebook")
            nb = nbformat.read(path, as_version=4)
            append_exercises(nb, path.stem)
            nbformat.write(nb, path)
            print(f"{path}: {len(EXERCISES[chapter_key(path.stem)])} exercise(s) written")
    else:
        for exercises in EXERCISES.values():
            for ex in exercises:
                ex.checker(ex.solution_function())

"""Exercises, their checkers and the students' edition (medst/book/exercises/, medst/book/student.py).

The checkers must accept the solutions (imported as the modules they are), report stubs as "not implemented yet"
without failing, and reject wrong answers written here by hand (averaging instead of summing, a flipped sign, a
wrong temperature, ...).
The students' edition must hide every solution and still run top to bottom under papermill.
"""

from __future__ import annotations

import importlib
import inspect
import json

import nbformat
import pytest
import torch
from exercise_helpers import define, reject

from medst.book import exercises as ex
from medst.book.exercises import EXERCISES
from medst.book.exercises.framework import SOLUTIONS
from medst.book.student import stub_from_solution, student_notebook, write_student_edition

ALL = [e for chapter in EXERCISES.values() for e in chapter]
IDS = [e.key for e in ALL]


# --------------------------------------------------------------------------- checkers on the solutions / stubs
@pytest.mark.parametrize("exercise", ALL, ids=IDS)
def test_solution_passes_its_checker(exercise, capsys):
    assert exercise.checker(define(exercise.solution_code, exercise.function)).passed is True
    assert f"\u2714 Exercise {exercise.number} ({exercise.title}): correct" in capsys.readouterr().out


@pytest.mark.parametrize("exercise", ALL, ids=IDS)
def test_solution_module_passes_its_checker(exercise, capsys):
    """Each solution is a real module: imported, its function passes the checker; its source is the cell."""
    module = importlib.import_module(f"medst.book.exercises.solutions.{exercise.solution}")
    function = getattr(module, exercise.function)
    assert function is exercise.solution_function()
    assert exercise.checker(function).passed is True
    assert "correct" in capsys.readouterr().out
    assert inspect.getsource(module) == exercise.solution_code
    assert exercise.solution_code.startswith("import torch") and exercise.chapter[:2] == exercise.solution[2:4]


def test_every_solution_module_belongs_to_an_exercise():
    files = {path.stem for path in SOLUTIONS.glob("*.py") if path.stem != "__init__"}
    assert files == {e.solution for e in ALL}


@pytest.mark.parametrize("exercise", ALL, ids=IDS)
def test_stub_is_reported_not_implemented(exercise, capsys):
    stub = define(exercise.stub_code, exercise.function)
    solution = define(exercise.solution_code, exercise.function)
    assert inspect.signature(stub) == inspect.signature(solution)
    assert stub.__doc__ == solution.__doc__
    result = exercise.checker(stub)
    assert result.passed is False and not result
    assert "not implemented yet" in capsys.readouterr().out


def test_every_chapter_has_exercises():
    for e in ALL:  # the checker's messages name the exercise as the book does
        assert e.checker.__doc__.startswith(f"Grade exercise {e.number}")
    assert [key[:2] for key in EXERCISES] == [f"{n:02d}" for n in range(1, 12)]
    for chapter in EXERCISES.values():
        assert 2 <= len(chapter) <= 3, [e.number for e in chapter]
        assert len({e.level for e in chapter}) >= 2, [e.level for e in chapter]  # not all of one level
    for e in ALL:
        assert e.prompt_md.startswith(f"### Exercise {e.number}")
        assert e.function in e.stub_code and e.function in e.check_code
        assert "NotImplementedError" in e.stub_code and "NotImplementedError" not in e.solution_code


@pytest.mark.parametrize("exercise", ALL, ids=IDS)
def test_check_cell_runs_on_the_solution_cell(exercise, capsys):
    """The notebook's two cells as they are: the solution cell defines the function, the check cell imports its
    checker from medst.book.exercises and passes it."""
    namespace: dict = {}
    exec(compile(exercise.solution_code, "<solution>", "exec"), namespace)
    exec(compile(exercise.check_code, "<check>", "exec"), namespace)
    assert "correct" in capsys.readouterr().out


# --------------------------------------------------------------------------- wrong answers are rejected
@pytest.mark.parametrize("exercise", ALL, ids=IDS)
def test_not_a_function(exercise):
    for not_a_function in (torch.tensor(1.0), 3.0):
        reject(exercise.checker, not_a_function, "pass the function itself")


# --------------------------------------------------------------------------- notebook cells
@pytest.mark.parametrize("chapter", list(EXERCISES))
def test_exercise_cells(chapter):
    cells = ex.exercise_cells(chapter)
    assert [c.cell_type for c in cells] == ["markdown"] + ["markdown", "code", "code"] * len(EXERCISES[chapter])
    for exercise, (prompt, solution, check) in zip(EXERCISES[chapter], zip(*[iter(cells[1:])] * 3)):
        assert prompt.source == exercise.prompt_md
        assert solution.metadata["tags"][0] == "solution"
        assert solution.source.strip() == exercise.solution_code.strip()
        assert solution.metadata["medst"]["stub"].strip() == exercise.stub_code.strip()
        assert check.metadata["tags"] == ["check"] and f"({exercise.function})" in check.source
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    ex.append_exercises(nb, f"book/{chapter}.ipynb")
    ex.append_exercises(nb, chapter)  # idempotent: replaces, does not duplicate
    assert len(nb.cells) == 1 + len(cells)
    nbformat.validate(nb)
    assert len({c.id for c in nb.cells}) == len(nb.cells)


def test_command_line(tmp_path, capsys):
    path = tmp_path / "06_temporal.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 6")]), path)
    ex.main(["append", str(path)])
    ex.main(["append", str(path)])
    nb = nbformat.read(path, as_version=4)
    assert [c.get("id") for c in nb.cells[1:]] == [c.id for c in ex.exercise_cells("06_temporal")]
    ex.main(["list"])
    assert "rmr" in capsys.readouterr().out


def test_chapter_lookup():
    assert ex.exercise_cells("6")[1].source == ex.exercise_cells("06_temporal")[1].source
    with pytest.raises(KeyError, match="no exercises"):
        ex.exercise_cells("99_none")


# --------------------------------------------------------------------------- students' edition
SOLUTION = '''import torch

SCALE = 2.0


@torch.no_grad()
def double(x: torch.Tensor,
           scale: float = SCALE) -> torch.Tensor:
    """Multiply by scale."""
    secret = x * scale  # SECRET-LINE
    return secret


def half(x): return x / 2  # SECRET-ONELINER


class Scaler:
    """Scales."""
    factor = 3
    cached = double(torch.ones(1))  # SECRET-CLASS-STATEMENT

    def __call__(self, x):
        return x * self.factor  # SECRET-METHOD

answer = double(torch.ones(1))  # SECRET-STATEMENT
'''


def test_stub_from_solution_keeps_signatures_and_hides_bodies():
    stub = stub_from_solution(SOLUTION)
    assert "SECRET" not in stub and "import torch" in stub and "SCALE = 2.0" in stub
    solved, stubbed = {}, {}
    exec(SOLUTION, solved)
    exec(stub, stubbed)
    for name in ("double", "half"):
        assert inspect.signature(stubbed[name]) == inspect.signature(solved[name])
        assert stubbed[name].__doc__ == solved[name].__doc__
        with pytest.raises(NotImplementedError, match=f"exercise: write {name}"):
            stubbed[name](torch.ones(1))
    assert stubbed["Scaler"].factor == 3 and stubbed["Scaler"].__doc__ == "Scales."
    with pytest.raises(NotImplementedError):
        stubbed["Scaler"]()(1)
    with pytest.raises(ValueError, match="cell 3"):
        stub_from_solution("def broken(:\n", where="cell 3")


def small_book(tmp_path, chapters=tuple(EXERCISES), wrong: str | None = None):
    """A notebook with a parameters cell, ordinary cells, the exercises of ``chapters`` and a generic solution
    cell; ``wrong`` names an exercise whose solution gets a flipped sign."""
    v4 = nbformat.v4
    cells = [
        v4.new_code_cell("profile = 'ci'", metadata={"tags": ["parameters"]}),
        v4.new_code_cell("print('before the exercises', 1 + 1)"),
    ]
    for chapter in chapters:
        cells += ex.exercise_cells(chapter)
    cells += [
        v4.new_code_cell(SOLUTION, metadata={"tags": ["solution"]}),  # no stub in metadata
        v4.new_code_cell("print('end of chapter reached')"),
    ]
    for cell in cells:
        if wrong and cell.metadata.get("medst", {}).get("exercise") == wrong and "solution" in cell.metadata["tags"]:
            cell.source = cell.source.replace("(sim / temperature)", "(-sim / temperature)")
            assert "-sim" in cell.source
    nb = v4.new_notebook(
        cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    # pretend it was executed: outputs that would give a solution away must not reach the students
    cells[-2].outputs = [v4.new_output("stream", name="stdout", text="SECRET-OUTPUT\n")]
    book = tmp_path / "book"
    (book / "figures").mkdir(parents=True)
    (book / "figures" / "f.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (book / "intro.md").write_text("# Intro\n")
    nbformat.write(nb, book / "chapter.ipynb")
    return book


def run(notebook, out):
    import papermill as pm

    return pm.execute_notebook(str(notebook), str(out), kernel_name="python3", progress_bar=False, cwd=str(out.parent))


def outputs_text(cell) -> str:
    return "".join(
        o.get("text", "") + json.dumps(o.get("data", {})) + "".join(o.get("traceback", []))
        for o in cell.get("outputs", [])
    )


def test_student_edition_hides_solutions(tmp_path):
    book = small_book(tmp_path)
    written = write_student_edition(book, tmp_path / "student")
    assert written == {tmp_path / "student" / "chapter.ipynb": len(ALL) + 1}
    assert (tmp_path / "student" / "figures" / "f.svg").exists() and (tmp_path / "student" / "intro.md").exists()
    original = nbformat.read(book / "chapter.ipynb", as_version=4)
    student = nbformat.read(tmp_path / "student" / "chapter.ipynb", as_version=4)
    nbformat.validate(student)
    text = "\n".join(c.source for c in student.cells) + json.dumps(student, ensure_ascii=False)
    assert "SECRET" not in text
    for exercise in ALL:  # no line of any solution body survives
        body = [
            line
            for line in exercise.solution_code.splitlines()
            if line.startswith("    ")
            and line.strip()
            and not line.strip().startswith(('"""', "#"))
            and line not in exercise.stub_code
        ]
        assert body and not any(line in text for line in body), exercise.key
    assert len(student.cells) == len(original.cells)
    for before, after in zip(original.cells, student.cells):
        assert after.get("outputs", []) == [] and after.get("execution_count") is None
        tags = before.metadata.get("tags", [])
        if "solution" in tags:
            assert after.metadata["tags"] == ["exercise"] and "NotImplementedError" in after.source
        else:
            assert after.source == before.source and after.metadata.get("tags", []) == tags
        # nbgrader's metadata is kept; the cells it locks (prompts, checks) cannot be edited or deleted
        assert after.metadata.get("nbgrader") == before.metadata.get("nbgrader")
        locked = before.metadata.get("nbgrader", {}).get("locked", False)
        assert after.metadata.get("editable", True) is not locked
        assert after.metadata.get("deletable", True) is not locked


@pytest.mark.notebooks
def test_student_edition_runs_top_to_bottom(tmp_path):
    """The students' version runs to the end under papermill, each check saying "not implemented yet";
    (the book's version passing its checks is test_solution_passes_its_checker and test_notebooks.py)."""
    from medst.book.student import main

    book = small_book(tmp_path)
    main(["--src", str(book), "--out", str(tmp_path / "student")])
    student = run(tmp_path / "student" / "chapter.ipynb", tmp_path / "student-run.ipynb")
    checks = [c for c in student.cells if "check" in c.metadata.get("tags", [])]
    assert len(checks) == len(ALL)
    assert all("not implemented yet" in outputs_text(c) for c in checks), [outputs_text(c) for c in checks]
    assert not any(o.output_type == "execute_result" for c in checks for o in c.outputs)  # no stray "False"
    assert "end of chapter reached" in outputs_text(student.cells[-1])
    assert not any(o.get("output_type") == "error" for c in student.cells for o in c.get("outputs", []))


@pytest.mark.notebooks
def test_wrong_solution_fails_at_its_check_cell(tmp_path):
    from papermill.exceptions import PapermillExecutionError

    book = small_book(tmp_path, chapters=["06_temporal"], wrong="rmr-mse")
    with pytest.raises(PapermillExecutionError) as info:
        run(book / "chapter.ipynb", tmp_path / "wrong-run.ipynb")
    assert info.value.ename == "ExerciseError" and "6.2" in info.value.evalue and "wrong sign" in info.value.evalue
    failed = nbformat.read(tmp_path / "wrong-run.ipynb", as_version=4)
    errors = [c for c in failed.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert [c.metadata["tags"] for c in errors] == [["check"]]
    assert errors[0].metadata["medst"]["exercise"] == "rmr-mse"


def real_chapters_with_exercises():
    from medst.book.build import chapters

    found = []
    for path in chapters():
        nb = nbformat.read(path, as_version=4)
        if any("solution" in c.metadata.get("tags", []) for c in nb.cells):
            found.append(path)
    return found


@pytest.mark.notebooks
@pytest.mark.parametrize("path", real_chapters_with_exercises(), ids=lambda p: p.stem)
def test_real_chapter_student_edition(path, tmp_path):
    """A chapter's students' version hides its solutions; its exercise cells run on their own and report
    "not implemented yet" (the full chapter, solutions included, runs in test_notebooks.py)."""
    nb = nbformat.read(path, as_version=4)
    student, stubbed = student_notebook(nb, name=path.name)
    assert stubbed == sum("solution" in c.metadata.get("tags", []) for c in nb.cells)
    for before, after in zip(nb.cells, student.cells):
        if "solution" in before.metadata.get("tags", []):
            assert "NotImplementedError" in after.source and after.source != before.source
    exercise_only = [c for c in student.cells if ex.is_exercise_cell(c) and c.cell_type == "code"]
    if not exercise_only:
        pytest.skip(f"{path.name}: its solution cells are not medst.book.exercises cells")
    small = nbformat.v4.new_notebook(cells=exercise_only, metadata=student.metadata)
    nbformat.write(small, tmp_path / "exercises.ipynb")
    done = run(tmp_path / "exercises.ipynb", tmp_path / "done.ipynb")
    checks = [c for c in done.cells if "check" in c.metadata.get("tags", [])]
    assert checks and all("not implemented yet" in outputs_text(c) for c in checks)

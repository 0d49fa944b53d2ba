"""``medst grade`` (medst/book/grade.py) and the nbgrader metadata of the exercise cells.

The graded notebooks are small ones built here (a parameters cell, one exercise's prompt, solution and check cells,
a few cells of mischief), not the book's chapters: each runs in its own kernel in a few seconds.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import re
import time

import jsonschema
import nbformat
import pytest

from medst.book import exercises as ex
from medst.book.build import chapters
from medst.book.exercises import EXERCISES, ExerciseError, find_exercise
from medst.book.exercises.framework import GRADE_LOG_ENV, NBGRADER_ENV
from medst.book.exercises.registry import chapter_key
from medst.book.grade import ExerciseGrade, NotebookGrade, exercise_key, format_table, restore_checks
from medst.book.student import nbgrader_markers, student_notebook
from medst.cli import main

EXERCISE = EXERCISES[chapter_key("06")][0]  # the first exercise of chapter 6: one is enough
LOOP_TIMEOUT = 30  # seconds: the endless notebook is killed after this (the others take about 10 s each)


def submission(path, solution: str, before: tuple[str, ...] = (), exercise=EXERCISE):
    """Write a notebook: parameters, the cells ``before``, then ``exercise``'s cells with ``solution`` as its
    solution cell, then a last cell."""
    v4 = nbformat.v4
    cells = [
        v4.new_code_cell(
            'profile = "cpu"\ndata_dir = "_data"\nseed = 0\ndevice = "auto"', metadata={"tags": ["parameters"]}
        ),
        *[v4.new_code_cell(code) for code in before],
    ]
    for cell in ex.exercise_cells(exercise.chapter):
        if exercise_key(cell) == exercise.key:
            if "solution" in cell.metadata.get("tags", []):
                cell.source = solution
            cells.append(cell)
    cells.append(v4.new_code_cell("print('end of notebook')"))
    kernel = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(v4.new_notebook(cells=cells, metadata=kernel), path)
    return path


def wrong_solution(exercise=EXERCISE) -> str:
    """The solution with its result shifted by one: a wrong answer for any checker."""
    fn = exercise.function
    return (
        exercise.solution_code
        + f"\n\n_right = {fn}\n\n\ndef {fn}(*args, **kwargs):\n    return _right(*args, **kwargs) + 1\n"
    )


def by_number(result: dict) -> dict:
    """The JSON grade of EXERCISE in one notebook's JSON result."""
    return next(e for e in result["exercises"] if e["number"] == EXERCISE.number)


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """A class of six submissions graded with ``medst grade --class ... --json``: (the folder, the CSV, the
    printed JSON, the seconds it took, the file where the endless notebook wrote its kernel's and child's pids)."""
    root = tmp_path_factory.mktemp("grade")
    folder = root / "submissions"
    folder.mkdir()
    pids = root / "loop-pids.txt"
    right = EXERCISE.solution_code
    data = root / "data"  # --data: a chapter data folder, copied for each notebook
    data.mkdir()
    (data / "phantom.txt").write_text("shared")
    own_copy = (  # fails (an error outside the exercises, in the reason) unless data_dir is its own copy of --data
        "import os\n"
        "assert open(os.path.join(data_dir, 'phantom.txt')).read() == 'shared'\n"
        f"assert os.path.realpath(data_dir) != {str(data)!r}\n"
        "assert os.path.realpath(data_dir).startswith(os.path.realpath(os.getcwd()))"
    )
    submission(folder / "correct.ipynb", right, before=(own_copy,))
    submission(folder / "wrong.ipynb", wrong_solution())
    stub, _ = student_notebook(nbformat.read(folder / "correct.ipynb", as_version=4))
    nbformat.write(stub, folder / "stub.ipynb")
    submission(folder / "crash.ipynb", right, before=("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",))
    loop = (  # it sleeps, rather than spin, so as not to slow the others down
        "import os, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "while True:\n    time.sleep(0.5)"
    )
    submission(folder / "loop.ipynb", right, before=(loop,))
    (folder / "bob").mkdir()
    delete = (
        "import os, shutil\n"
        "for name in os.listdir('.'):\n"
        "    shutil.rmtree(name) if os.path.isdir(name) else os.remove(name)\n"
        "print('left:', os.listdir('.'))"
    )
    submission(folder / "bob" / "06_temporal.ipynb", right, before=(delete,))
    out = root / "grades.csv"
    start, printed = time.perf_counter(), io.StringIO()
    with contextlib.redirect_stdout(printed):
        options = ["--out", str(out), "--timeout", str(LOOP_TIMEOUT), "--jobs", "4", "--data", str(data), "--json"]
        main(["grade", "--class", str(folder), *options])
    assert (data / "phantom.txt").read_text() == "shared"  # bob deleted his copy, not the data folder
    return folder, out, printed.getvalue(), time.perf_counter() - start, pids


def test_class_is_graded(graded_class):
    folder, out, printed, seconds, pids = graded_class
    results = {r["student"]: r for r in json.loads(printed)}
    rows = {row["student"]: row for row in csv.DictReader(out.open())}
    assert set(rows) == {"correct", "wrong", "stub", "crash", "loop", "bob/06_temporal"}
    n, points = EXERCISE.number, str(EXERCISE.points)
    possible = str(sum(e.points for e in EXERCISES[EXERCISE.chapter]))  # the chapter's other exercises: missing
    expected = {  # student: (points, outcome, status)
        "correct": (points, "graded", "passed"),
        "wrong": ("0", "graded", "failed"),
        "stub": ("0", "graded", "not done"),
        "crash": ("0", "crashed", "not run"),
        "loop": ("0", "timeout", "not run"),
        "bob/06_temporal": (points, "graded", "passed"),  # deleted its folder's files, then answered
    }
    for student, (earned, outcome, status) in expected.items():
        row = rows[student]
        assert (row[n], row["total"], row["possible"], row["outcome"]) == (earned, earned, possible, outcome), row
        assert row["status"].startswith(f"{n} {status}"), row
        graded = by_number(results[student])
        assert (graded["status"], graded["points"], results[student]["outcome"]) == (status, int(earned), outcome)
    assert "wrong answer" in by_number(results["wrong"])["feedback"]
    assert "not implemented yet" in by_number(results["stub"])["feedback"]
    assert "raised outside the exercises" not in rows["correct"]["reason"]  # its data_dir was its own copy
    assert "kernel died" in rows["crash"]["reason"] and f"{LOOP_TIMEOUT:g} s" in rows["loop"]["reason"]
    # the submissions are untouched (each ran on a copy, in its own folder), and the grader is still here
    assert len(list(folder.rglob("*.ipynb"))) == 6
    assert LOOP_TIMEOUT <= results["loop"]["seconds"] < LOOP_TIMEOUT + 15 and seconds < 2 * LOOP_TIMEOUT + 30
    # the endless notebook's kernel and the process it started were killed with it
    kernel, child = (int(p) for p in pids.read_text().split())
    deadline = time.time() + 5
    while (alive(kernel) or alive(child)) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(kernel) and not alive(child)


def test_one_notebook_table_and_json(tmp_path, capsys):
    """One notebook: a syntax error in the solution is "error", a broken cell elsewhere does not stop the run,
    an edited check cell is restored; the table and the JSON say so."""
    path = submission(tmp_path / "carol.ipynb", "def broken(:\n    pass", before=("1 / 0",))
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if "check" in cell.metadata.get("tags", []):
            cell.source = "print('correct!')"  # the check cell tampered with
    nbformat.write(nb, path)
    main(["grade", str(path), "--json", "--timeout", "120"])
    result = json.loads(capsys.readouterr().out)
    assert result["outcome"] == "graded" and result["total"] == 0
    assert result["possible"] == sum(e.points for e in EXERCISES[EXERCISE.chapter])
    graded = by_number(result)
    assert (graded["number"], graded["status"], graded["level"]) == (EXERCISE.number, "error", EXERCISE.level)
    assert "SyntaxError" in graded["feedback"]
    assert "ZeroDivisionError" in result["reason"] and f"check {EXERCISE.number} restored" in result["reason"]
    fields = {f.name for f in dataclasses.fields(NotebookGrade)}
    grade = NotebookGrade(**{k: v for k, v in result.items() if k in fields and k != "exercises"})
    grade.exercises = [ExerciseGrade(**e) for e in result["exercises"]]
    lines = format_table(grade).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("exercise"))
    assert lines[header].split()[:4] == ["exercise", "title", "level", "status"]
    row = next(line for line in lines[header + 1 :] if line.startswith(EXERCISE.number + " "))
    assert re.search(rf"\berror +0/{EXERCISE.points} +SyntaxError", row), row


def test_command_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="NOTEBOOK or --class"):
        main(["grade"])
    with pytest.raises(SystemExit, match="no such notebook"):
        main(["grade", str(tmp_path / "missing.ipynb")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no \\*.ipynb"):
        main(["grade", "--class", str(tmp_path / "empty")])
    with pytest.raises(SystemExit):
        main(["grade", "--help"])
    assert "--timeout" in capsys.readouterr().out


def test_restore_checks_adds_a_missing_check():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(EXERCISE.solution_code)])
    notes = restore_checks(nb, [EXERCISE])
    assert notes == [f"check {EXERCISE.number} was missing: added at the end"]
    assert nb.cells[-1].source.strip() == EXERCISE.check_code.strip() and exercise_key(nb.cells[-1]) == EXERCISE.key


# --------------------------------------------------------------------------- nbgrader metadata
# nbgrader's schema of a cell's metadata.nbgrader, version 3 (the properties nbgrader writes before release)
NBGRADER_V3 = {
    "type": "object",
    "properties": {
        "schema_version": {"type": "integer", "minimum": 3, "maximum": 3},
        "grade": {"type": "boolean"},
        "locked": {"type": "boolean"},
        "solution": {"type": "boolean"},
        "task": {"type": "boolean"},
        "grade_id": {"type": "string", "pattern": "^[a-zA-Z0-9_\\-]*$"},
        "points": {"type": "number", "minimum": 0},
    },
    "required": ["schema_version", "grade", "locked", "solution"],
    "additionalProperties": False,
}


def chapters_with_exercises():
    return [p for p in chapters() if any(ex.is_exercise_cell(c) for c in nbformat.read(p, as_version=4).cells)]


@pytest.mark.parametrize("path", chapters_with_exercises(), ids=lambda p: p.stem)
def test_nbgrader_metadata_in_chapter_and_student_edition(path):
    """Every exercise cell of a chapter carries nbgrader's metadata (solution cells answers, check cells tests
    worth the exercise's points, the rest read-only), and so does its students' edition, where the locked cells
    are read-only; the students' edition raises NotImplementedError only in exercise cells."""
    nb = nbformat.read(path, as_version=4)
    student, stubbed = student_notebook(nb, name=path.name)
    assert stubbed == sum("solution" in c.metadata.get("tags", []) for c in nb.cells)
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids))
    for version in (nb, student):
        cells = [c for c in version.cells if ex.is_exercise_cell(c)]
        assert cells
        for cell in cells:
            meta = cell.metadata["nbgrader"]
            jsonschema.validate(dict(meta), NBGRADER_V3)
            assert meta["schema_version"] == 3 and meta["grade_id"] == cell.get("id", meta["grade_id"])
            role = "check" if "check" in cell.metadata["tags"] else "prompt"
            if cell.cell_type == "code" and role == "prompt":
                role = "solution"
            key = cell.metadata["medst"]["exercise"]
            if role == "check":
                assert meta["grade"] and meta["locked"] and not meta["solution"]
                assert meta["points"] == find_exercise(key).points
            elif role == "solution":
                assert meta["solution"] and not meta["grade"] and not meta["locked"]
            else:
                assert meta["locked"] and not meta["grade"] and not meta["solution"]
            if version is student:
                assert cell.metadata.get("editable", True) is (role == "solution")
                assert cell.metadata.get("deletable", True) is (role == "solution")
    for cell in student.cells:
        if "NotImplementedError" in cell.source:
            assert ex.is_exercise_cell(cell) and "exercise" in cell.metadata["tags"], cell.source[:80]
    # the students' exercise cells run, each check saying "not implemented yet" (in this process: no kernel)
    namespace, printed = {}, io.StringIO()
    code = [c for c in student.cells if ex.is_exercise_cell(c) and c.cell_type == "code"]
    with contextlib.redirect_stdout(printed):
        for cell in code:
            exec(compile(cell.source, f"{path.name}:{cell.get('id')}", "exec"), namespace)
    assert printed.getvalue().count("not implemented yet") == sum("check" in c.metadata["tags"] for c in code)


def define(code: str, name: str):
    namespace: dict = {}
    exec(compile(code, f"<{name}>", "exec"), namespace)
    return namespace[name]


def test_checks_write_the_grade_log(tmp_path, monkeypatch):
    """run_check appends one JSON line per check to $MEDST_GRADE_LOG; under nbgrader a stub fails its check."""
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(GRADE_LOG_ENV, str(log))
    EXERCISE.checker(define(EXERCISE.solution_code, EXERCISE.function))
    EXERCISE.checker(define(EXERCISE.stub_code, EXERCISE.function))
    with pytest.raises(ExerciseError):
        EXERCISE.checker(define(wrong_solution(), EXERCISE.function))
    monkeypatch.setenv(NBGRADER_ENV, "autograde")
    with pytest.raises(ExerciseError, match="not implemented yet"):
        EXERCISE.checker(define(EXERCISE.stub_code, EXERCISE.function))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["status"] for r in records] == ["passed", "not done", "failed", "not done"]
    assert {r["number"] for r in records} == {EXERCISE.number} and "wrong answer" in records[2]["message"]
    monkeypatch.delenv(GRADE_LOG_ENV)
    monkeypatch.delenv(NBGRADER_ENV)
    assert EXERCISE.checker(define(EXERCISE.stub_code, EXERCISE.function)).passed is False  # no log, no raise
    assert len(log.read_text().splitlines()) == 4


def test_nbgrader_markers_keep_the_stub():
    stub = EXERCISE.stub_code
    marked = nbgrader_markers(stub)
    lines = marked.splitlines()
    raise_at = next(i for i, line in enumerate(lines) if "raise NotImplementedError" in line)
    indent = lines[raise_at][: len(lines[raise_at]) - len(lines[raise_at].lstrip())]
    assert lines[raise_at - 1] == indent + "### BEGIN SOLUTION" and lines[raise_at + 1] == indent + "### END SOLUTION"
    assert [line for line in lines if "### " not in line] == stub.splitlines()
    compile(marked, "<stub>", "exec")

"""``medst grade``: run students' notebooks and grade their exercises.

::

    medst grade alice.ipynb                      # one notebook: a table of its exercises
    medst grade alice.ipynb --json               # the same as JSON
    medst grade --class submissions/ --out grades.csv --jobs 2

A submission is a chapter notebook (the students' edition, :mod:`medst.book.student`, with the student's answers).
Its exercises are found by the cells' metadata (``metadata.medst.exercise``, or nbgrader's ``grade_id``
``ex-KEY-check``) and, failing that, by the file name (``06_temporal.ipynb``).

How one submission is run (:func:`grade_notebook`), never in the grader's own process:

1. the notebook is read and made ready here: each exercise's check cell gets back its original source (a check
   the student edited or deleted is restored: the grade is the checker's, not the notebook's), and a cell with
   the parameters (``profile``, ci by default; ``data_dir``; ``seed``; ``device``, cpu) is put after its
   ``parameters`` cell, as papermill does;
2. a temporary folder holds two folders: ``work/`` (a copy of the notebook, the kernel's working folder; its
   ``data/`` is the chapter's ``data_dir``: empty, so the chapter makes its phantom there, or a copy of
   ``--data``) and ``grader/`` (the grade log, the errors of the cells), so that a submission that deletes the
   files of its working folder still gets graded;
3. a child process, in a new process group, executes the notebook with nbclient in its own kernel, with
   ``allow_errors``: a failing check or a broken cell does not stop the cells after it;
4. after ``--timeout`` seconds of wall clock the child's process group and the kernel's (the kernel runs in a
   session of its own, with whatever it started) are killed; they are killed anyway when the child is done;
5. every :func:`~medst.book.exercises.framework.run_check` appends one JSON line to the grade log
   (``$MEDST_GRADE_LOG``), which is read back here: an exercise is "passed", "failed" (wrong answer, or the
   library's own implementation), "not done" (still the stub), "error" (its solution or check cell raised
   before the checker could say anything, e.g. a syntax error) or "not run" (its check never ran: the
   notebook died or ran out of time before it).

A passed exercise earns its points (:attr:`~medst.book.exercises.framework.Exercise.points`: 1, 2 or 3 by level).
``--class DIR`` grades every ``*.ipynb`` under DIR, one student per notebook: the student's name is the notebook's
path under DIR without ``.ipynb`` (``DIR/alice.ipynb`` is "alice", ``DIR/alice/06_temporal.ipynb`` is
"alice/06_temporal", so nbgrader's ``submitted/STUDENT/ASSIGNMENT/`` folders work as they are). The CSV has one row
per notebook and one column per exercise (points), then the total, the points possible, the outcome ("graded",
"timeout", "crashed" or "unreadable"), the reason and each exercise's status.

The folders and the process groups keep a submission away from the grader and from the other submissions; they do
not make a sandbox: a notebook runs with the grader's user rights, so grade code you do not trust inside a
container or a throw-away account.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medst.book.exercises.framework import GRADE_LOG_ENV, NBGRADER_ENV, Exercise
from medst.book.exercises.registry import EXERCISES, chapter_key
from medst.config import DEFAULT_GRADE_TIMEOUT
from medst.utils import atomic_write

__all__ = [
    "STATUSES",
    "ExerciseGrade",
    "NotebookGrade",
    "exercise_key",
    "find_exercises",
    "restore_checks",
    "grade_notebook",
    "grade_class",
    "write_csv",
    "format_table",
    "grade_main",
]

PASSED, FAILED, NOT_DONE, ERROR, NOT_RUN = "passed", "failed", "not done", "error", "not run"
STATUSES = (PASSED, FAILED, NOT_DONE, ERROR, NOT_RUN)
LOGGED = (PASSED, FAILED, NOT_DONE, ERROR)  # the statuses run_check writes to the grade log
GRADED, TIMEOUT, CRASHED, UNREADABLE = "graded", "timeout", "crashed", "unreadable"  # a notebook's outcome
DEFAULT_TIMEOUT = DEFAULT_GRADE_TIMEOUT  # seconds of wall clock per notebook
KERNEL = "medst-grade"  # the kernel a submission runs in: this Python (its kernelspec is written per submission)
FEEDBACK_LINES = 2  # lines of a checker's message in the table (all of it in --json)

# The child process: executes one notebook with nbclient, writing as it goes the index and error of each cell that
# raises (so that what ran before a timeout is known), then how the run ended. It imports nbformat and nbclient only
# (a medst module would import torch and the library before the kernel does the same), so it is a script.
# argv: notebook, errors file (JSON lines), status file, file for the kernel's process group, kernel name.
_WORKER = r"""
import json, os, sys
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

source, errors_file, status_file, pgid_file, kernel_name = sys.argv[1:6]
client = NotebookClient(
    nbformat.read(source, as_version=4),
    timeout=None,
    kernel_name=kernel_name,
    allow_errors=True,
    shutdown_kernel="immediate",
    resources={"metadata": {"path": os.getcwd()}},
)

def kernel_started(**kwargs):
    pgid = getattr(getattr(client.km, "provisioner", None), "pgid", None)
    if pgid:
        with open(pgid_file, "w") as f:
            f.write(str(pgid))

def cell_error(cell, cell_index, execute_reply, **kwargs):
    content = execute_reply.get("content", {})
    error = {"index": cell_index, "ename": content.get("ename", "Error"), "evalue": content.get("evalue", "")}
    with open(errors_file, "a") as f:
        f.write(json.dumps(error) + "\n")

client.on_notebook_start = kernel_started
client.on_cell_error = cell_error
status = {"outcome": "graded", "reason": ""}
try:
    client.execute()
except DeadKernelError as err:
    status = {"outcome": "crashed", "reason": f"the kernel died ({str(err).strip() or 'no message'})"}
except Exception as err:
    status = {"outcome": "crashed", "reason": f"execution stopped: {type(err).__name__}: {err}"}
with open(status_file, "w") as f:
    json.dump(status, f)
"""


@dataclass
class ExerciseGrade:
    """One exercise of a submission: its status and points."""

    number: str
    key: str
    title: str
    level: str
    status: str  # one of STATUSES
    points: int  # earned
    possible: int
    feedback: str  # the checker's message, or the error, or why it did not run


@dataclass
class NotebookGrade:
    """One submission: how its run ended and the grade of each exercise."""

    student: str
    notebook: str
    chapter: str | None
    outcome: str  # GRADED (ran to its end), TIMEOUT, CRASHED or UNREADABLE
    reason: str  # why it is not GRADED; notes otherwise (cells outside the exercises that raised)
    seconds: float
    exercises: list[ExerciseGrade] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(e.points for e in self.exercises)

    @property
    def possible(self) -> int:
        return sum(e.possible for e in self.exercises)

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "possible": self.possible}


# ----------------------------------------------------------------------------------------------------
# The submission's cells
# ----------------------------------------------------------------------------------------------------
def _meta(cell, name: str) -> dict:
    value = cell.get("metadata", {}).get(name)
    return value if isinstance(value, dict) else {}


def _tags(cell) -> list:
    tags = cell.get("metadata", {}).get("tags", [])
    return tags if isinstance(tags, list) else []


def exercise_key(cell) -> str | None:
    """The exercise a cell belongs to: ``metadata.medst.exercise``, else from nbgrader's ``grade_id``."""
    key = _meta(cell, "medst").get("exercise")
    if isinstance(key, str) and key != "heading":
        return key
    match = re.fullmatch(r"ex-(.+)-(prompt|solution|check)", str(_meta(cell, "nbgrader").get("grade_id", "")))
    return match.group(1) if match else None


def _is_check(cell) -> bool:
    return cell.get("cell_type") == "code" and ("check" in _tags(cell) or _meta(cell, "nbgrader").get("grade") is True)


def find_exercises(nb, path: Path) -> tuple[str | None, list[Exercise]]:
    """The chapter of a submission and its exercises: from the cells' metadata, else from the file name."""
    known = {e.key: (chapter, e) for chapter, exercises in EXERCISES.items() for e in exercises}
    for cell in nb.cells:
        key = exercise_key(cell)
        if key in known:
            chapter = known[key][0]
            return chapter, list(EXERCISES[chapter])
    try:
        chapter = chapter_key(path.stem)
    except KeyError:
        return None, []
    return chapter, list(EXERCISES[chapter])


def restore_checks(nb, exercises: Sequence[Exercise]) -> list[str]:
    """Give every exercise's check cell its original source; append the check of an exercise that has none.

    Returns notes on what was restored (for the grade's reason)."""
    import nbformat

    notes = []
    for ex in exercises:
        checks = [c for c in nb.cells if _is_check(c) and exercise_key(c) == ex.key]
        for cell in checks:
            if cell.source.strip() != ex.check_code.strip():
                notes.append(f"check {ex.number} restored")
                cell.source = ex.check_code.rstrip("\n")
        if not checks:
            notes.append(f"check {ex.number} was missing: added at the end")
            nb.cells.append(
                nbformat.v4.new_code_cell(
                    ex.check_code.rstrip("\n"), metadata={"tags": ["check"], "medst": {"exercise": ex.key}}
                )
            )
    return notes


def inject_parameters(nb, parameters: dict) -> None:
    """Put a cell setting ``parameters`` after the cell tagged ``parameters`` (at the top without one), as
    papermill does; an earlier injected cell is replaced."""
    import nbformat

    nb.cells = [c for c in nb.cells if "injected-parameters" not in _tags(c)]
    lines = ["# Parameters (medst grade)"] + [f"{name} = {value!r}" for name, value in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    where = next((i + 1 for i, c in enumerate(nb.cells) if "parameters" in _tags(c)), 0)
    nb.cells.insert(where, cell)


# ----------------------------------------------------------------------------------------------------
# Running one submission
# ----------------------------------------------------------------------------------------------------
def _kill_group(pgid: int | None) -> None:
    if pgid and pgid > 1 and hasattr(os, "killpg"):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _read_pgid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def write_kernelspec(box: Path) -> str:
    """A kernelspec under ``box/kernels`` that runs this very Python (whatever the notebook's metadata or the
    user's own ``python3`` kernelspec name); returns the value for ``$JUPYTER_PATH``, ``box`` first."""
    spec = box / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    return os.pathsep.join([str(box), *filter(None, [os.environ.get("JUPYTER_PATH")])])


def run_submission(notebook: Path, box: Path, timeout: float, env: dict) -> tuple[str, str]:
    """Execute ``notebook`` (in its folder) in a child process, results into ``box``; returns (outcome, reason).

    The kernel is :data:`KERNEL` (``env`` must hold :func:`write_kernelspec`'s ``JUPYTER_PATH``). The child
    runs in a new process group; after ``timeout`` seconds, or when it is done, its group and the kernel's are
    killed."""
    cmd = [
        sys.executable,
        "-c",
        _WORKER,
        str(notebook),
        str(box / "errors.jsonl"),
        str(box / "status.json"),
        str(box / "kernel.pgid"),
        KERNEL,
    ]
    with open(box / "worker.log", "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=notebook.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(_read_pgid(box / "kernel.pgid"))  # the kernel, and anything it started
            if proc.poll() is None:
                _kill_group(proc.pid)
            proc.wait()
    if timed_out:
        return TIMEOUT, f"stopped after {timeout:g} s (wall-clock limit; an endless loop?)"
    try:
        status = json.loads((box / "status.json").read_text())
        return str(status["outcome"]), str(status["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return CRASHED, f"the notebook's run ended without a result (exit code {proc.returncode}): " + _tail(
            box / "worker.log"
        )


def _json_lines(path: Path) -> list[dict]:
    """The JSON objects of a file written line by line (a line cut by a kill, or not JSON, is skipped)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _log_records(path: Path) -> dict[str, dict]:
    """The last record of each exercise number in the grade log."""
    return {str(r["number"]): r for r in _json_lines(path) if r.get("status") in LOGGED and "number" in r}


def _cell_errors(nb, errors: list[dict], exercises: Sequence[Exercise]) -> tuple[dict[str, str], list[str]]:
    """The cells of ``nb`` that raised: {exercise key: the first error of its cells}, [errors of other cells]."""
    keys = {e.key for e in exercises}
    per_exercise: dict[str, str] = {}
    others: list[str] = []
    for error in errors:
        index = error.get("index")
        if not isinstance(index, int) or not 0 <= index < len(nb.cells):
            continue
        text = f"{error.get('ename', 'Error')}: {error.get('evalue', '')}".strip()
        key = exercise_key(nb.cells[index])
        if key in keys:
            per_exercise.setdefault(key, text)
        else:
            others.append(f"cell {index}: {text}")
    return per_exercise, others


def _grade_exercises(
    exercises: Sequence[Exercise], records: dict[str, dict], errors: dict[str, str], outcome: str
) -> list[ExerciseGrade]:
    out = []
    for ex in exercises:
        record = records.get(ex.number)
        if record is not None:
            status, feedback = record["status"], str(record.get("message", ""))
        elif ex.key in errors:
            status, feedback = ERROR, errors[ex.key]
        else:
            status = NOT_RUN
            feedback = "its check never ran" + ("" if outcome == GRADED else f" (the notebook {outcome})")
        points = ex.points if status == PASSED else 0
        out.append(ExerciseGrade(ex.number, ex.key, ex.title, ex.level, status, points, ex.points, feedback))
    return out


def grade_notebook(
    path: str | os.PathLike,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    profile: str = "ci",
    data: str | os.PathLike | None = None,
    student: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
) -> NotebookGrade:
    """Run one submission in a child process, in a temporary folder, and grade its exercises.

    ``data``: a data folder copied into the submission's folder as its ``data_dir`` (default: an empty folder,
    the chapter makes its data there); ``threads``: ``OMP_NUM_THREADS`` of the kernel when not set already.
    """
    import nbformat

    path = Path(path)
    student = student or path.stem
    start = time.perf_counter()

    def result(outcome, reason, chapter=None, exercises=()):
        seconds = round(time.perf_counter() - start, 1)
        return NotebookGrade(student, str(path), chapter, outcome, reason, seconds, list(exercises))

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # nbformat raises several kinds on a broken file
        return result(UNREADABLE, f"not a notebook: {type(err).__name__}: {err}")
    chapter, exercises = find_exercises(nb, path)
    if not exercises:
        return result(UNREADABLE, "no exercise of the book found (no exercise cell metadata, no chapter file name)")
    notes = restore_checks(nb, exercises)
    with tempfile.TemporaryDirectory(prefix="medst-grade-", ignore_cleanup_errors=True) as tmp:
        work, box = Path(tmp) / "work", Path(tmp) / "grader"
        box.mkdir()
        work.mkdir()
        if data is not None:
            shutil.copytree(data, work / "data", symlinks=True)
        else:
            (work / "data").mkdir()
        inject_parameters(nb, {"profile": profile, "data_dir": str(work / "data"), "seed": seed, "device": device})
        notebook = work / path.name
        nbformat.write(nb, notebook)
        env = {k: v for k, v in os.environ.items() if k != NBGRADER_ENV}
        env.update(
            {GRADE_LOG_ENV: str(box / "grade-log.jsonl"), "JUPYTER_PATH": write_kernelspec(box), "MPLBACKEND": "Agg"}
        )
        if threads:
            env.setdefault("OMP_NUM_THREADS", str(threads))
        outcome, reason = run_submission(notebook, box, timeout, env)
        records = _log_records(box / "grade-log.jsonl")
        errors, other_errors = _cell_errors(nb, _json_lines(box / "errors.jsonl"), exercises)
    if other_errors:
        more = f" (and {len(other_errors) - 1} more)" if len(other_errors) > 1 else ""
        notes.append(f"raised outside the exercises: {other_errors[0]}{more}")
    reason = "; ".join(part for part in [reason, *notes] if part)
    return result(outcome, reason, chapter, _grade_exercises(exercises, records, errors, outcome))


def grade_class(
    folder: str | os.PathLike,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int = 1,
    profile: str = "ci",
    data: str | os.PathLike | None = None,
) -> list[NotebookGrade]:
    """Grade every ``*.ipynb`` under ``folder`` (checkpoints aside), ``jobs`` at a time; one result per notebook,
    named by its path under ``folder``. A notebook that cannot be graded gets its result with the reason."""
    folder = Path(folder)
    notebooks = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))

    def one(path: Path) -> NotebookGrade:
        student = path.relative_to(folder).with_suffix("").as_posix()
        try:
            return grade_notebook(path, timeout=timeout, profile=profile, data=data, student=student, threads=threads)
        except Exception as err:  # a bug of the grader must not lose the other students' grades
            return NotebookGrade(student, str(path), None, CRASHED, f"grader error: {type(err).__name__}: {err}", 0.0)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, notebooks))


# ----------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------
def _short(text: str, lines: int = FEEDBACK_LINES, width: int = 110) -> str:
    kept = " | ".join(line.strip() for line in text.strip().splitlines()[:lines] if line.strip())
    return kept if len(kept) <= width else kept[: width - 3] + "..."


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def format_table(grade: NotebookGrade) -> str:
    """The text report of one notebook: a summary line, then a row per exercise."""
    head = f"{grade.student}: {grade.total}/{grade.possible} points ({grade.outcome}"
    head += f", {grade.chapter}" if grade.chapter else ""
    head += f", {grade.seconds:g} s)"
    if grade.reason:
        head += f"\n  {grade.reason}"
    if not grade.exercises:
        return head
    rows = [
        [e.number, e.title, e.level, e.status, f"{e.points}/{e.possible}", _short(e.feedback)] for e in grade.exercises
    ]
    return head + "\n" + _table(["exercise", "title", "level", "status", "points", "feedback"], rows)


def _columns(grades: Sequence[NotebookGrade]) -> list[Exercise]:
    """The exercises graded in any of ``grades``, in the book's order."""
    seen = {e.key for g in grades for e in g.exercises}
    return [e for exercises in EXERCISES.values() for e in exercises if e.key in seen]


def write_csv(grades: Sequence[NotebookGrade], out: str | os.PathLike) -> Path:
    """One row per notebook: student, chapter, points per exercise (by number), total, possible, outcome,
    reason and each exercise's status."""
    columns = _columns(grades)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                ["student", "chapter", *[e.number for e in columns], "total", "possible", "outcome", "reason", "status"]
            )
            for g in grades:
                points = {e.key: e.points for e in g.exercises}
                status = "; ".join(f"{e.number} {e.status}" for e in g.exercises)
                row = [g.student, g.chapter or "", *[points.get(e.key, "") for e in columns]]
                writer.writerow([*row, g.total, g.possible, g.outcome, g.reason, status])

    return atomic_write(out, write)


def format_class(grades: Sequence[NotebookGrade]) -> str:
    """One line per notebook: student, points, outcome, statuses."""
    rows = [
        [
            g.student,
            f"{g.total}/{g.possible}",
            g.outcome,
            ", ".join(f"{e.number} {e.status}" for e in g.exercises) or _short(g.reason, 1, 80),
        ]
        for g in grades
    ]
    return _table(["student", "points", "outcome", "exercises"], rows)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def grade_main(args: argparse.Namespace) -> None:
    """``medst grade``: one notebook (table or JSON) or a class (CSV, and a summary)."""
    if (args.notebook is None) == (args.folder is None):
        sys.exit("error: give one NOTEBOOK or --class DIR")
    if args.data is not None and not args.data.is_dir():
        sys.exit(f"error: --data {args.data}: no such folder")
    if args.notebook is not None:
        if not args.notebook.is_file():
            sys.exit(f"error: {args.notebook}: no such notebook")
        grade = grade_notebook(args.notebook, timeout=args.timeout, profile=args.profile, data=args.data)
        print(json.dumps(grade.to_dict(), indent=2, ensure_ascii=False) if args.json else format_table(grade))
        return
    if not args.folder.is_dir():
        sys.exit(f"error: --class {args.folder}: no such folder")
    grades = grade_class(args.folder, timeout=args.timeout, jobs=args.jobs, profile=args.profile, data=args.data)
    if not grades:
        sys.exit(f"error: no *.ipynb under {args.folder}")
    write_csv(grades, args.out)
    if args.json:
        print(json.dumps([g.to_dict() for g in grades], indent=2, ensure_ascii=False))
    else:
        print(format_class(grades))
        print(f"{len(grades)} notebook(s) graded; grades written to {args.out}")

"""The students' edition of the book: every solution replaced by its stub.

``python -m medst.student --src book --out student`` copies the folder ``book`` to ``student`` (figures and
text pages as they are) and rewrites each notebook:

* a code cell tagged ``solution`` gets the stub stored in its ``metadata.medst.stub`` (written by
  :func:`medst.exercises.exercise_cells`), or, without one, a stub made from the solution itself: its
  imports, constants and the signatures and docstrings of its functions and classes, each body replaced by
  ``raise NotImplementedError("exercise: ...")`` (see :func:`stub_from_solution`); its tags become
  ``exercise``;
* every output and execution count is cleared, so no solution leaks through what it printed;
* the ``check`` cells stay: a checker reports a stub as "not implemented yet" instead of failing, so the
  students' notebook runs top to bottom before any exercise is done.
"""
from __future__ import annotations

import argparse
import ast
import copy
import shutil
import sys
from pathlib import Path

import nbformat

__all__ = ["stub_from_solution", "student_notebook", "write_student_edition", "main"]

SOLUTION_TAG, STUDENT_TAG = "solution", "exercise"
HIDING_TAGS = {"hide-input", "hide-cell", "remove-input", "remove-cell"}


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _stub_def(node: ast.AST, lines: list[str], indent: str) -> list[str]:
    """Source lines of a def or class with its body replaced.

    Kept: decorators, the signature exactly as written, the docstring. A function's body becomes
    ``raise NotImplementedError(...)``; a class keeps its literal constants and annotations and stubs its
    methods.
    """
    body = node.body  # type: ignore[attr-defined]
    has_doc = ast.get_docstring(node, clean=False) is not None  # type: ignore[arg-type]
    if body[0].lineno == node.lineno:  # a one-liner ("def f(x): return x"): regenerate the signature
        shell = copy.deepcopy(node)
        shell.body = [ast.Pass()]  # type: ignore[attr-defined]
        header = [indent + line for line in ast.unparse(shell).splitlines()[:-1]]
        body_indent, rest = indent + "    ", []
    else:
        start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
        end = body[0].end_lineno if has_doc else body[0].lineno - 1
        header = lines[start - 1 : end]
        while not has_doc and len(header) > 1 and (not header[-1].strip() or header[-1].lstrip().startswith("#")):
            header.pop()  # comments and blank lines between the signature and the body
        body_indent = _indent_of(lines[body[0].lineno - 1])
        rest = body[1:] if has_doc else body
    if not isinstance(node, ast.ClassDef):
        return header + [f'{body_indent}raise NotImplementedError("exercise: write {node.name}")']  # type: ignore[attr-defined]
    out = list(header)
    for stmt in rest:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out += [""] + _stub_def(stmt, lines, body_indent)
        elif _is_constant(stmt) or (isinstance(stmt, ast.AnnAssign) and stmt.value is None):
            out += lines[stmt.lineno - 1 : stmt.end_lineno]  # literal constants and bare annotations
    if len(out) == len(header) and not has_doc:
        out.append(f"{body_indent}pass")
    return out


def _is_constant(stmt: ast.stmt) -> bool:
    """``NAME = <literal>`` (a constant the exercise text may refer to)."""
    value = getattr(stmt, "value", None)
    if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or value is None:
        return False
    try:
        ast.literal_eval(value)
    except ValueError:
        return False
    return True


def stub_from_solution(source: str, *, where: str = "solution cell") -> str:
    """A stub for a solution: imports and literal constants kept, every function and class kept with its
    decorators, signature and docstring but with its body replaced by ``raise NotImplementedError``, any
    other statement dropped (it would give the answer away).

    Raises:
        ValueError: naming ``where`` if the solution is not valid Python.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ValueError(f"{where}: the solution is not valid Python ({err.msg}, line {err.lineno}); "
                         "cannot make a stub from it") from None
    lines = source.splitlines()
    out: list[str] = []
    dropped = 0
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) or _is_constant(stmt):
            piece = lines[stmt.lineno - 1 : stmt.end_lineno]
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            piece = _stub_def(stmt, lines, "")
            if out and out[-1].strip():
                out += ["", ""]
        else:
            dropped += 1
            continue
        out += piece
    if dropped:
        out += ["", "", "# Your code here."]
    return "\n".join(out).strip("\n") + "\n"


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
        raise FileNotFoundError(f"medst/student.py: source folder {src} does not exist")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ValueError(f"medst/student.py: the output folder {out} must lie outside the source {src}")
    ignore = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.ipynb")
    shutil.copytree(src, out, ignore=ignore, dirs_exist_ok=True)
    written: dict[Path, int] = {}
    for path in sorted(src.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as err:  # nbformat raises several kinds on a broken file
            raise ValueError(f"medst/student.py: cannot read notebook {path}: {err}") from err
        student, stubbed = student_notebook(nb, name=str(path))
        target = out / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(student, target)
        written[target] = stubbed
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medst.student", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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

"""Stubs of exercise solutions: what a student starts from.

:func:`stub_from_solution` keeps a solution's imports, literal constants and the signatures and docstrings of its
functions and classes, and replaces every body by ``raise NotImplementedError("exercise: write NAME")``. The
exercises (:mod:`medst.book.exercises`) store each stub made this way in their solution cell's metadata; the
students' edition (:mod:`medst.book.student`) puts it in place of the solution.
"""

from __future__ import annotations

import ast
import copy

__all__ = ["stub_from_solution"]


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
        raise ValueError(
            f"{where}: the solution is not valid Python ({err.msg}, line {err.lineno}); cannot make a stub from it"
        ) from None
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

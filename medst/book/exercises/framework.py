"""The grading framework of the exercises: a check's inputs, its reference, typical mistakes, the verdict.

A checker (one per exercise, in ``ch02.py`` ... ``ch06.py``) builds a :class:`Check`: the inputs (:class:`Case`,
several seeds and shapes, edge cases included), the library's implementation as reference, and mistake models
with their hints. :func:`run_check` calls the reader's function on every case and compares the result, and for
losses also the gradients, with the reference. It returns a :class:`CheckResult` (true when passed). A stub that
still raises ``NotImplementedError`` is reported as "not implemented yet" (printed; the result is false), so that
a student's copy of a chapter runs top to bottom before any exercise is done. A wrong answer raises
:class:`ExerciseError` (an ``AssertionError``) naming the input, the expected and the returned values, the largest
absolute error and a hint; where the answer matches a typical mistake (averaging instead of summing, a flipped
sign, ...) the hint names that mistake.

When the environment variable ``MEDST_GRADE_LOG`` names a file, every :func:`run_check` also appends one JSON line
to it (the exercise's number, title and function, ``status``: "passed", "failed", "not done" or "error", and the
message): ``medst grade`` (:mod:`medst.book.grade`) reads each exercise's outcome there instead of parsing what
the notebook printed. Under nbgrader (``NBGRADER_EXECUTION`` set to "autograde" or "validate") a stub raises
:class:`ExerciseError` instead of passing quietly, so that nbgrader gives its check cell no points.

:class:`Exercise` is one exercise as data: its text, its solution (a real module under ``solutions/``, whose
source is the notebook's solution cell and from which the student's stub is made) and its checker.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medst.book.stubs import stub_from_solution

ATOL, RTOL = 1e-5, 1e-4  # values (float32 inputs)
GRAD_ATOL, GRAD_RTOL = 1e-4, 1e-3  # gradients
LEVELS = {"easy": 1, "medium": 2, "hard": 3}  # an exercise's level -> its points in a grade
SOLUTIONS = Path(__file__).resolve().parent / "solutions"  # one module per exercise: the solution cell's source
GRADE_LOG_ENV = "MEDST_GRADE_LOG"  # a file: run_check appends one JSON line per check (read by medst grade)
NBGRADER_ENV = "NBGRADER_EXECUTION"  # set by nbgrader while it autogrades or validates a notebook


class ExerciseError(AssertionError):
    """An exercise's function gave a wrong answer; the message says on which input and how."""


@dataclass(frozen=True)
class CheckResult:
    """What a checker returns: ``passed`` (True), or False for a stub; truthy only when passed.

    The checker has already printed its message, so in a notebook the result displays nothing.
    """

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:  # shown by the print already
        pass


# ----------------------------------------------------------------------------------------------------
# Checking machinery
# ----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One input of a check: positional ``args`` (tensors and modules), keyword ``kwargs``.

    ``grad`` lists the positions of the tensor arguments whose gradient is compared (losses only).
    """

    label: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    grad: tuple[int, ...] = ()

    def fresh(self) -> tuple[list[Any], dict]:
        """A copy of the inputs that the called function may modify freely; grad inputs require grad."""
        args = [
            a.detach().clone().requires_grad_(i in self.grad) if isinstance(a, Tensor) else a
            for i, a in enumerate(self.args)
        ]
        return args, dict(self.kwargs)


@dataclass
class Check:
    """What a checker needs: the exercise, its inputs, the reference, typical mistakes with their hints."""

    number: str
    title: str
    function: str
    cases: list[Case]
    reference: Callable[..., Any]
    hint: str
    mistakes: Sequence[tuple[str, Callable[..., Any]]] = ()
    outputs: tuple[str, ...] = ()  # names of the entries of a tuple result, for the messages
    # the library's implementations the reader is writing: functions, methods or classes (all their methods).
    # The reader's function may neither be one of them (an alias) nor call one (checked while it runs).
    forbidden: Sequence[Any] = ()

    @property
    def name(self) -> str:
        return f"Exercise {self.number} ({self.title})"


def _describe(value: Any) -> str:
    """A short text for a tensor (scalar value, or shape and a few entries) or anything else."""
    if isinstance(value, Tensor):
        value = value.detach()
        if value.dim() == 0:
            return f"{value.item():.6g}"
        flat = value.reshape(-1)
        head = ", ".join(f"{v:.4g}" if value.is_floating_point() else str(v) for v in flat[:6].tolist())
        return f"tensor of shape {list(value.shape)} [{head}{', ...' if flat.numel() > 6 else ''}]"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    return repr(value)


def _mismatch(
    expected: Any, got: Any, what: str = "result", atol: float = ATOL, rtol: float = RTOL, names: Sequence[str] = ()
) -> str | None:
    """None if ``got`` matches ``expected`` (tensors or tuples of tensors), else a description.

    ``names`` name the entries of a tuple result (default ``result[i]``).
    """
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            wanted = f" ({', '.join(names)})" if names else ""
            return f"{what}: expected a tuple of {len(expected)} values{wanted}, got {_describe(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            problem = _mismatch(e, g, names[i] if i < len(names) else f"{what}[{i}]", atol, rtol)
            if problem:
                return problem
        return None
    if not isinstance(got, Tensor):
        extra = " (did you forget `return`?)" if got is None else ""
        return f"{what}: expected a torch.Tensor, got {type(got).__name__}{extra}"
    if got.shape != expected.shape:
        scalar = (
            " (a loss is a scalar: reduce with .mean() or .sum() as the method says)" if expected.dim() == 0 else ""
        )
        return f"{what}: expected shape {list(expected.shape)}, got {list(got.shape)}{scalar}"
    if expected.dtype == torch.bool or got.dtype == torch.bool:
        if got.dtype != expected.dtype:
            return f"{what}: expected dtype {expected.dtype}, got {got.dtype}"
        wrong = (got.cpu() != expected.cpu()).nonzero()
        if len(wrong):
            return (
                f"{what}: {len(wrong)} entries differ, first at index {tuple(wrong[0].tolist())}\n"
                f"  expected: {_describe(expected)}\n  got:      {_describe(got)}"
            )
        return None
    g, e = got.detach().cpu().double(), expected.detach().cpu().double()
    if not torch.isfinite(g).all() and torch.isfinite(e).all():
        return (
            f"{what}: contains NaN or inf where the expected values are finite\n"
            f"  expected: {_describe(expected)}\n  got:      {_describe(got)}\n"
            "  (log of a softmax that underflowed? use F.log_softmax / F.cross_entropy)"
        )
    if not torch.allclose(g, e, atol=atol, rtol=rtol):
        error = (g - e).abs()
        at = ""
        if error.dim():
            at = f" (at index {tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))})"
        return (
            f"{what} differs\n  expected: {_describe(expected)}\n  got:      {_describe(got)}\n"
            f"  max abs error: {error.max().item():.3g}{at}"
        )
    return None


def _call(fn: Callable, case: Case) -> tuple[Any, list[Any]]:
    """Run ``fn`` on a fresh copy of the case; returns (output, the argument list it was given)."""
    args, kwargs = case.fresh()
    return fn(*args, **kwargs), args


def _gradients(output: Any, args: list[Any], positions: tuple[int, ...]) -> list[Tensor] | None:
    """d output / d args[positions] (zeros where the output does not depend on an input); None if no graph."""
    if not isinstance(output, Tensor) or not output.requires_grad:
        return None
    inputs = [args[i] for i in positions]
    grads = torch.autograd.grad(output.sum(), inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _which_mistake(check: Check, case: Case, got: Any, expected: Any) -> str | None:
    """The hint of the first typical mistake whose output equals ``got`` (and differs from ``expected``)."""
    for hint, wrong in check.mistakes:
        try:
            with torch.no_grad():
                args, kwargs = case.fresh()
                value = wrong(*args, **kwargs)
        except Exception:  # a mistake model that does not apply to this input
            continue
        if _mismatch(value, got) is None and _mismatch(value, expected) is not None:
            return hint
    return None


def _unwrap(fn: Any) -> Any:
    """The function under ``functools.partial``, ``functools.wraps`` and bound methods."""
    for _ in range(10):
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        elif inspect.ismethod(fn):
            fn = fn.__func__
        else:
            break
    return fn


def _forbidden_code(items: Sequence[Any]) -> dict[Any, str]:
    """Code object -> qualified name, for every function, method, or method of a class in ``items``."""
    codes: dict[Any, str] = {}
    for item in items:
        item = _unwrap(item)
        members = vars(item).values() if inspect.isclass(item) else (item,)
        for member in members:
            member = _unwrap(member.__func__ if isinstance(member, (staticmethod, classmethod)) else member)
            code = getattr(member, "__code__", None)
            if code is not None:
                codes[code] = f"{member.__module__}.{member.__qualname__}"
    return codes


def _library_function(fn: Any) -> str | None:
    """The dotted name of ``fn`` when it is medst's own code (not an exercise solution), else None."""
    fn = _unwrap(fn)
    module = getattr(fn, "__module__", None) or ""
    if not (module == "medst" or module.startswith("medst.")) or module.startswith(f"{__package__}.solutions"):
        return None
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"


@contextmanager
def _watching(codes: dict[Any, str], called: list[str]) -> Iterator[None]:
    """While active, append to ``called`` the names of the forbidden functions that get called (any depth, any
    alias: the check is on the code object that runs)."""
    if not codes:
        yield
        return

    def profile(frame, event, arg):  # noqa: ARG001
        if event == "call" and frame.f_code in codes and codes[frame.f_code] not in called:
            called.append(codes[frame.f_code])

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)


def _refuse_calls(check: Check, called: list[str]) -> None:
    """Raise :class:`ExerciseError`: the reader's function called the library's implementation(s) ``called``."""
    raise ExerciseError(
        f"{check.name}: `{check.function}` calls the library's {', '.join(f'`{c}`' for c in called)}.\n"
        + _wrap(
            f"hint: write `{check.function}` with torch operations instead; the check compares your "
            "version with that very function, so calling it proves nothing."
        )
    )


def _refuse_library(check: Check, fn: Any) -> None:
    """Raise :class:`ExerciseError` when ``fn`` is the library's implementation itself (or another medst
    function) rather than the reader's own code."""
    name = _library_function(fn)
    if name is None:
        name = _forbidden_code(check.forbidden).get(getattr(_unwrap(fn), "__code__", None))
    if name is not None:
        raise ExerciseError(
            f"{check.name}: `{check.function}` is the library's `{name}`, not your own code.\n"
            + _wrap(
                f"hint: write `{check.function}` yourself with torch operations; the point of the exercise is "
                "to build what medst does, and the check compares your version with medst's."
            )
        )


def run_check(check: Check, fn: Any) -> CheckResult:
    """Grade ``fn`` on every case of ``check``; passed if all cases pass, not passed if it is still a stub.

    The outcome is also appended to the grade log when ``$MEDST_GRADE_LOG`` is set (:func:`log_outcome`).

    Raises:
        ExerciseError: on the first case where ``fn`` raises, or its value or gradient is wrong; for a stub
            too when nbgrader runs the notebook (``$NBGRADER_EXECUTION``), so that the check cell fails there.
    """
    try:
        result = _run_cases(check, fn)
    except ExerciseError as err:
        log_outcome(check, "failed", str(err))
        raise
    except Exception as err:  # the checker itself broke: not the reader's answer
        log_outcome(check, "error", f"{check.name}: the checker raised {type(err).__name__}: {err}")
        raise
    log_outcome(check, "passed" if result.passed else "not done", result.message)
    if not result.passed and os.environ.get(NBGRADER_ENV, "").lower() in ("autograde", "validate"):
        raise ExerciseError(result.message)
    return result


def log_outcome(check: Check, status: str, message: str) -> None:
    """Append ``{"number", "title", "function", "status", "message"}`` as one JSON line to the file that
    ``$MEDST_GRADE_LOG`` names; nothing when it is unset (or the file cannot be written)."""
    path = os.environ.get(GRADE_LOG_ENV)
    if not path:
        return
    record = {
        "number": check.number,
        "title": check.title,
        "function": check.function,
        "status": status,
        "message": message,
    }
    try:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record, ensure_ascii=False) + "\n")
    except OSError:  # the grader reports a check without a line as "not run"
        pass


def _run_cases(check: Check, fn: Any) -> CheckResult:
    """:func:`run_check` without the grade log: the verdict on every case."""
    if not callable(fn):
        raise ExerciseError(
            f"{check.name}: pass the function itself (e.g. `{check.function}`, without calling "
            f"it), not a {type(fn).__name__}: {fn!r:.60}"
        )
    _refuse_library(check, fn)
    library_reference = (check.reference,) if _library_function(check.reference) else ()
    codes = _forbidden_code([*check.forbidden, *library_reference])
    for case in check.cases:
        called: list[str] = []
        try:
            with _watching(codes, called):
                got, args = _call(fn, case)
        except NotImplementedError:
            message = (
                f"{check.name}: not implemented yet.\n  Replace `raise NotImplementedError` in "
                f"`{check.function}` with your code, then run this cell again."
            )
            print(message)
            return CheckResult(False, message)
        except Exception as err:
            if called:
                _refuse_calls(check, called)
            raise ExerciseError(
                f"{check.name}: your function raised {type(err).__name__}: {err}\n"
                f"{_wrap('input: ' + case.label)}\n{_wrap('hint: ' + check.hint)}"
            ) from err
        if called:
            _refuse_calls(check, called)
        expected_out, expected_args = _call(check.reference, case)
        problem = _mismatch(expected_out, got, names=check.outputs)
        if problem is None and case.grad:
            expected_grads = _gradients(expected_out, expected_args, case.grad)
            got_grads = _gradients(got, args, case.grad)
            if got_grads is None:
                problem = (
                    "the result carries no gradient: it must be computed from the inputs with "
                    "differentiable torch operations (no .detach(), .item(), numpy or torch.no_grad)"
                )
            else:
                for position, e, g in zip(case.grad, expected_grads, got_grads):
                    problem = _mismatch(
                        e, g, f"the gradient w.r.t. {_argument_name(fn, position)}", GRAD_ATOL, GRAD_RTOL
                    )
                    if problem:
                        break
        if problem:
            if problem.startswith("the gradient"):
                hint = (
                    "the value is right but its gradient is not: is part of the computation cut from the "
                    "graph (.detach(), .item(), .data, torch.no_grad) or a constant where an input belongs?"
                )
            else:
                mistake = _which_mistake(check, case, got, expected_out)
                hint = f"looks like a typical mistake: {mistake}" if mistake else check.hint
            raise ExerciseError(
                f"{check.name}: wrong answer.\n{_wrap('input: ' + case.label)}\n  {problem}\n{_wrap('hint: ' + hint)}"
            )
    grads = " and gradients" if any(case.grad for case in check.cases) else ""
    message = f"\u2714 {check.name}: correct.\n  Values{grads} match medst on all {len(check.cases)} test inputs."
    print(message)
    return CheckResult(True, message)


def _argument_name(fn: Callable, position: int) -> str:
    """The name the student gave positional argument ``position`` (or "argument N")."""
    try:
        names = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        names = []
    return f"`{names[position]}`" if position < len(names) else f"argument {position + 1}"


def _wrap(text: str) -> str:
    """Indent a long line of feedback and wrap it at 100 columns."""
    return textwrap.fill(
        text, width=100, initial_indent="  ", subsequent_indent="    ", break_long_words=False, break_on_hyphens=False
    )


def argument_ignored(reference: Callable[..., Any], name: str, value: float) -> tuple[str, Callable[..., Any]]:
    """Mistake model: the keyword argument ``name`` is ignored and ``value`` used instead."""
    return (
        f"the `{name}` argument is ignored (the result is the one for {name}={value})",
        lambda *args, **kwargs: reference(*args, **{**kwargs, name: value}),
    )


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=generator(seed)) * scale


def unit(*shape: int, seed: int) -> Tensor:
    """Random L2-normalised vectors along the last dimension."""
    return F.normalize(randn(*shape, seed=seed), dim=-1)


# ----------------------------------------------------------------------------------------------------
# An exercise as data: text, solution, stub, check
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exercise:
    """One exercise: what the reader reads, should arrive at and starts from, and how it is checked.

    The solution is the module ``solutions/{solution}.py`` of this package: its source text is the notebook's
    solution cell as it is, and the stub is made from it (:func:`medst.book.stubs.stub_from_solution`).
    """

    key: str  # short id, used in cell ids and metadata
    chapter: str  # notebook stem, e.g. "06_temporal"
    number: str  # "6.1"
    title: str
    function: str  # the name the reader defines
    prompt: str  # the exercise text in markdown, below its heading
    solution: str  # module name under solutions/, e.g. "ch06_fmc"
    checker: Callable[[Callable], CheckResult]  # check_... of the chapter's module
    level: str = "medium"  # "easy", "medium" or "hard": shown in the heading; the grade's points (1, 2, 3)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"exercise {self.key}: level must be one of {list(LEVELS)}, got {self.level!r}")

    @property
    def points(self) -> int:
        return LEVELS[self.level]

    @property
    def prompt_md(self) -> str:
        """The markdown cell: a heading with the number and title, then the text."""
        heading = f"### Exercise {self.number} ({self.level}): {self.title}"
        return heading + "\n\n" + textwrap.dedent(self.prompt).strip() + "\n"

    @property
    def solution_path(self) -> Path:
        return SOLUTIONS / f"{self.solution}.py"

    @property
    def solution_code(self) -> str:
        """The solution cell: the source of the solution module."""
        return self.solution_path.read_text(encoding="utf-8")

    @property
    def stub_code(self) -> str:
        """The student's starting point: the solution's imports, signature and docstring, body a raise."""
        return stub_from_solution(self.solution_code, where=str(self.solution_path))

    @property
    def check_code(self) -> str:
        """The check cell: import the checker, call it on the reader's function."""
        name = self.checker.__name__
        return f"from medst.book.exercises import {name}\n\n{name}({self.function})\n"

    def solution_function(self) -> Callable:
        """The solution, imported from its module."""
        module = importlib.import_module(f"{__package__}.solutions.{self.solution}")
        return getattr(module, self.function)

"""Helpers shared by the exercise tests: define a cell's function, expect a refusal with given words."""

from __future__ import annotations

import pytest

from medst.book import exercises as ex
from medst.book.exercises import ExerciseError


def define(code: str, name: str):
    """Execute a cell's source and return the function it defines."""
    namespace: dict = {}
    exec(compile(code, f"<{name}>", "exec"), namespace)
    return namespace[name]


def solution(key: str):
    """The solution of exercise ``key`` as the notebook's solution cell defines it."""
    exercise = ex.find_exercise(key)
    return define(exercise.solution_code, exercise.function)


def reject(checker, fn, *fragments: str) -> str:
    """``checker(fn)`` raises ExerciseError whose message (whitespace normalised) holds every fragment."""
    with pytest.raises(ExerciseError) as info:
        checker(fn)
    message = str(info.value)
    flat = " ".join(message.split())
    for fragment in fragments:
        assert fragment in message or fragment in flat, message
    return message


def mistake(checker, fn, hint: str) -> None:
    """A wrong answer fails with the typical-mistake hint that contains ``hint``."""
    reject(checker, fn, "looks like a typical mistake", hint)

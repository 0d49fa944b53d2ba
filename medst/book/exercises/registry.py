"""Every exercise of the book, per chapter: :data:`EXERCISES`, and look-ups by key or chapter."""

from __future__ import annotations

from pathlib import Path

from medst.book.exercises import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11
from medst.book.exercises.framework import Exercise

# notebook stem -> its exercises, in the order the chapter ends with them
# one module per chapter: CHAPTER, EXERCISES
CHAPTERS = (ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11)
EXERCISES: dict[str, list[Exercise]] = {
    module.CHAPTER: list(module.EXERCISES) for module in CHAPTERS if module.EXERCISES
}


def find_exercise(key: str) -> Exercise:
    """The exercise with this key (e.g. "fmc")."""
    for exercises in EXERCISES.values():
        for exercise in exercises:
            if exercise.key == key:
                return exercise
    raise KeyError(
        f"medst/book/exercises: no exercise {key!r}; known: {[e.key for es in EXERCISES.values() for e in es]}"
    )


def chapter_key(chapter: str) -> str:
    """'06_temporal', 'book/06_temporal.ipynb', '06' or '6' -> '06_temporal'."""
    stem = Path(str(chapter)).stem
    if stem in EXERCISES:
        return stem
    if stem.isdigit():
        for key in EXERCISES:
            if int(key.split("_")[0]) == int(stem):
                return key
    raise KeyError(
        f"medst/book/exercises: chapter {chapter!r} has no exercises; chapters with exercises: {list(EXERCISES)}"
    )

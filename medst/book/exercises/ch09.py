"""Exercises of chapter 9 (``book/09_ablations.ipynb``)."""

from __future__ import annotations

from medst.book.exercises.framework import Exercise

CHAPTER = "09_ablations"
EXERCISES: list[Exercise] = []

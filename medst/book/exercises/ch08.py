"""Exercises of chapter 8 (``book/08_evaluation.ipynb``)."""

from __future__ import annotations

from medst.book.exercises.framework import Exercise

CHAPTER = "08_evaluation"
EXERCISES: list[Exercise] = []

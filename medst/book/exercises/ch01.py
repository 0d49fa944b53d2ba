"""Exercises of chapter 1 (``book/01_data.ipynb``)."""

from __future__ import annotations

from medst.book.exercises.framework import Exercise

CHAPTER = "01_data"
EXERCISES: list[Exercise] = []

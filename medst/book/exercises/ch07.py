"""Exercises of chapter 7 (``book/07_pretraining.ipynb``)."""

from __future__ import annotations

from medst.book.exercises.framework import Exercise

CHAPTER = "07_pretraining"
EXERCISES: list[Exercise] = []

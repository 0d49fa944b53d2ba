"""Exercises of chapters 2-6 and the checkers that grade them.

Each exercise asks the reader to write one piece of Med-ST as a plain function; its checker calls that function
on random inputs (several seeds and shapes, edge cases included) and compares the result, and for losses also the
gradients, with the library's implementation::

    from medst.book.exercises import check_fmc

    check_fmc(fmc)  # prints a success message, or raises ExerciseError

Modules:

* ``framework.py``: the grading framework (:class:`ExerciseError`, :class:`CheckResult`, ``Case``, ``Check``,
  ``run_check``) and :class:`Exercise`, one exercise as data;
* ``ch02.py`` ... ``ch06.py``: per chapter, the checkers with their inputs and mistake models, and the exercise
  texts;
* ``solutions/``: each solution as a real module (``solutions/ch06_fmc.py``), exactly the notebook's solution
  cell; the student's stub is made from it (:mod:`medst.book.stubs`);
* ``registry.py``: :data:`EXERCISES` per chapter, :func:`find_exercise`;
* ``cells.py``: the notebook cells (:func:`exercise_cells`, :func:`append_exercises`) and the command line
  ``python -m medst.book.exercises append book/06_temporal.ipynb``, which (re)writes a chapter's exercise cells.

``python -m medst.book.student`` writes the students' copy of the book with every solution replaced by its stub.
"""

from medst.book.exercises.cells import append_exercises, exercise_cells, is_exercise_cell, main
from medst.book.exercises.ch02 import check_word_merge
from medst.book.exercises.ch03 import check_global_loss
from medst.book.exercises.ch04 import check_move_block
from medst.book.exercises.ch05 import check_local_word_side
from medst.book.exercises.ch06 import check_fmc, check_rmr
from medst.book.exercises.framework import CheckResult, Exercise, ExerciseError
from medst.book.exercises.registry import EXERCISES, find_exercise

__all__ = [
    "ExerciseError",
    "CheckResult",
    "Exercise",
    "EXERCISES",
    "check_word_merge",
    "check_global_loss",
    "check_move_block",
    "check_local_word_side",
    "check_fmc",
    "check_rmr",
    "exercise_cells",
    "append_exercises",
    "is_exercise_cell",
    "find_exercise",
    "main",
]

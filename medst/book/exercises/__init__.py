"""Exercises of chapters 1-11 and the checkers that grade them.

Each exercise (easy, medium or hard) asks the reader for one function: a piece of Med-ST with a twist the chapter
did not show, a variant to measure, or a number to predict and compute. Its checker calls that function on inputs
it builds (several seeds and shapes, masks, padding, train and eval mode, edge cases) and compares the result,
and where it is differentiable also the gradients, with a reference. A submission that is, wraps or calls the
library's own implementation is refused::

    from medst.book.exercises import check_rmr_mse

    check_rmr_mse(rmr_mse)  # prints a success message, or raises ExerciseError naming the likely mistake

Modules:

* ``framework.py``: the grading framework (:class:`ExerciseError`, :class:`CheckResult`, ``Case``, ``Check``,
  ``run_check``) and :class:`Exercise`, one exercise as data;
* ``ch01.py`` ... ``ch11.py``: per chapter, the checkers with their inputs and mistake models, and the exercise
  texts;
* ``solutions/``: each solution as a real module (``solutions/ch06_rmr_mse.py``), exactly the notebook's solution
  cell; the student's stub is made from it (:mod:`medst.book.stubs`);
* ``registry.py``: :data:`EXERCISES` per chapter, :func:`find_exercise`;
* ``cells.py``: the notebook cells (:func:`exercise_cells`, :func:`append_exercises`) and the command line
  ``python -m medst.book.exercises append book/06_temporal.ipynb``, which (re)writes a chapter's exercise cells.

``python -m medst.book.student`` writes the students' copy of the book with every solution replaced by its stub.
"""

from medst.book.exercises.cells import append_exercises, exercise_cells, is_exercise_cell, main
from medst.book.exercises.ch01 import check_dicom_grey, check_sequence_windows
from medst.book.exercises.ch02 import check_masked_batch_norm, check_merge_words_max, check_move_tokens
from medst.book.exercises.ch03 import check_chance_level, check_lowest_global_loss, check_patient_infonce
from medst.book.exercises.ch04 import check_mixed_batch_block, check_move_extra_parameters, check_routed_block
from medst.book.exercises.ch05 import check_masked_word_side, check_word_weight_collapse
from medst.book.exercises.ch06 import check_masked_cycle, check_miss_costs, check_rmr_mse
from medst.book.exercises.ch07 import check_guarded_step, check_logged_lr
from medst.book.exercises.ch08 import check_best_threshold, check_shared_report_recall, check_zero_shot
from medst.book.exercises.ch09 import check_flipped_verdicts, check_seeds_needed, check_verdict
from medst.book.exercises.ch10 import check_masked_pixel_loss, check_whole_word_mask
from medst.book.exercises.ch11 import check_selection_precision, check_volume_tokens
from medst.book.exercises.framework import CheckResult, Exercise, ExerciseError
from medst.book.exercises.registry import EXERCISES, find_exercise

__all__ = [
    "ExerciseError",
    "CheckResult",
    "Exercise",
    "EXERCISES",
    "check_dicom_grey",
    "check_sequence_windows",
    "check_move_tokens",
    "check_merge_words_max",
    "check_masked_batch_norm",
    "check_chance_level",
    "check_lowest_global_loss",
    "check_patient_infonce",
    "check_move_extra_parameters",
    "check_routed_block",
    "check_mixed_batch_block",
    "check_masked_word_side",
    "check_word_weight_collapse",
    "check_miss_costs",
    "check_rmr_mse",
    "check_whole_word_mask",
    "check_masked_pixel_loss",
    "check_masked_cycle",
    "check_logged_lr",
    "check_guarded_step",
    "check_best_threshold",
    "check_zero_shot",
    "check_shared_report_recall",
    "check_verdict",
    "check_flipped_verdicts",
    "check_seeds_needed",
    "check_volume_tokens",
    "check_selection_precision",
    "exercise_cells",
    "append_exercises",
    "is_exercise_cell",
    "find_exercise",
    "main",
]

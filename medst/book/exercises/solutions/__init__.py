"""The solutions of the exercises, one module per exercise (``ch06_fmc.py``: exercise 6.1's ``fmc``).

Each module is the notebook's solution cell as it is: :class:`medst.book.exercises.framework.Exercise` reads its
source for the cell and makes the student's stub from it; the tests import it and grade it with its checker.
"""

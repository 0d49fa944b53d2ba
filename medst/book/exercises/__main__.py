"""``python -m medst.book.exercises list|append NOTEBOOK...|check`` (:func:`medst.book.exercises.cells.main`)."""

from medst.book.exercises.cells import main

if __name__ == "__main__":
    main()

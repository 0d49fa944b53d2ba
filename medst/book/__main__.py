"""``python -m medst.book execute|html``: execute the chapters, render the book (:mod:`medst.book.build`)."""

from medst.book.build import main

if __name__ == "__main__":
    main()

"""``python -m medst.phantom --out DIR ...``: write the phantom data set (see :func:`medst.phantom.synth.main`)."""

from medst.phantom.synth import main

if __name__ == "__main__":
    main()

"""Shared fixtures: one small phantom and its prepared index per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """A 60-patient phantom at 64 px (MIMIC-CXR-JPG tree, benchmarks, ground truth)."""
    from medst.phantom import synthesize

    out = tmp_path_factory.mktemp("phantom")
    synthesize(out, n_patients=60, image_size=64, seed=3, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared_dir(phantom_dir, tmp_path_factory):
    """The phantom prepared for pre-training with a 73 px cache (64 px crops, as the ci profile uses)."""
    from medst.data.mimic import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(phantom_dir / "mimic-cxr-jpg", out, cache_size=73, progress=False)
    return out


@pytest.fixture(scope="session")
def executed_book(tmp_path_factory):
    """The book's chapters executed under ``ci``, each at most once per session, with one data folder for
    all of them as in a real build (tests/test_notebooks.py runs them, tests/test_browser.py renders them)."""
    from browser_check import ExecutedChapters

    root = tmp_path_factory.mktemp("executed-book")
    return ExecutedChapters(root / "executed", data_dir=root / "data", cwd=root / "work")

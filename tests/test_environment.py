"""The environment `make venv` builds: the tools the README sends readers to are installed in it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _made_by_make_venv() -> bool:
    """True when the running interpreter lives in a virtualenv that `make venv` finished (it leaves
    ``<venv>/.installed`` behind once ``pip install -e ".[dev,book,offline-text]"`` has run)."""
    return sys.prefix != sys.base_prefix and (Path(sys.prefix) / ".installed").is_file()


needs_make_venv = pytest.mark.skipif(
    not _made_by_make_venv(),
    reason=f"the interpreter ({sys.executable}) is not in a virtualenv made by `make venv` (no "
    f"{Path(sys.prefix) / '.installed'}), so the book extra may not be installed here; run the tests with "
    "`make test` or `.venv/bin/python -m pytest`",
)


@needs_make_venv
@pytest.mark.parametrize("command", [["jupyter", "lab"], ["jupyter-lab"]], ids=["jupyter lab", "jupyter-lab"])
def test_jupyter_lab_runs_in_the_venv(command):
    """The README's `.venv/bin/jupyter lab book/` works on a fresh clone: jupyterlab comes with the book extra."""
    exe = BIN / command[0]
    assert exe.is_file(), f"{exe} is missing: install the book extra (pip install -e '.[book]')"
    result = subprocess.run([str(exe), *command[1:], "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    version = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", version), f"{' '.join(command)} --version printed {result.stdout!r}"
    assert int(version.split(".")[0]) >= 4, f"jupyterlab {version} is older than the book extra's jupyterlab>=4"

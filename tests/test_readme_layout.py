"""README's "Layout" section names every module of ``medst`` and nothing that does not exist."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout_lines() -> list[str]:
    """The lines of the second code block of README's Layout section (the library, module by module)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "README's Layout section should hold two code blocks (top level, library)"
    return [line for line in blocks[1].splitlines() if line.strip()]


def modules() -> list[str]:
    """Every module of the package as a path relative to the repository (solutions and __init__/__main__ aside)."""
    found = []
    for path in sorted((ROOT / "medst").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path.name in ("__init__.py", "__main__.py") or "/solutions/" in rel:
            continue
        found.append(rel)
    return found


def covered(module: str, lines: list[str]) -> bool:
    for line in lines:
        first = line.split()[0]
        if first.endswith("/") and module.startswith(first):
            return True
        if fnmatch.fnmatch(module, first) or module == first:
            return True
        same_folder = first.rsplit("/", 1)[0] == module.rsplit("/", 1)[0]
        if same_folder and re.search(rf"\b{re.escape(Path(module).name)}\b", line):
            return True
    return False


def test_every_module_is_in_the_layout():
    lines = layout_lines()
    missing = [m for m in modules() if not covered(m, lines)]
    assert not missing, f"README.md Layout does not mention: {missing}"


def test_every_path_in_the_layout_exists():
    for line in layout_lines():
        first = line.split()[0]
        matches = list(ROOT.glob(first.rstrip("/"))) if "*" in first else [ROOT / first]
        assert matches and all(m.exists() for m in matches), f"README.md Layout names {first}, which does not exist"


def test_the_checker_can_fail():
    assert not covered("medst/train/missing.py", layout_lines())
    assert covered("medst/train/shipped.py", layout_lines())

"""book/method.md, the page docstrings and chapters cite as "Method §N": the citations, the page's numbering.

(a) every "Method §X" / "Method §X.Y" citation (also lists such as "Method §1, §6" and "Method §2-§3") in the
library, the chapters, the benchmarks, the tests and the README names a heading that exists on the page;
(b) none of those files points outside the repository (private notes, a ``shared`` folder beside it);
(c) the page's equation numbers are unique, numbered by section, and every display math block is closed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METHOD = ROOT / "book" / "method.md"

NUMBER = r"\d+(?:\.\d+)?"
# "Method §5", "Method §3.4", "Method §1, §6, §8", "Method §2-§3, §7"
CITATION = re.compile(rf"Method\s+§\s*{NUMBER}(?:\s*(?:,|-|–|and)\s*§\s*{NUMBER})*")
CITED = re.compile(rf"§\s*({NUMBER})")
HEADING = re.compile(r"^(#{1,6})\s+(\d+(?:\.\d+)*)\.?\s+\S", re.M)
# Names of files outside the repository that nothing inside it may mention (split so this file does not match).
OUTSIDE = re.compile(r"\b(?:" + "METHOD" + "|" + "DESIGN" + r")\.md\b|\.\./" + "shared")
TAG = re.compile(r"\\tag\{([^}]*)\}")
TARGET = re.compile(r"^\((eq-[A-Za-z0-9_-]+)\)=\s*$", re.M)
SECTIONS = {str(n) for n in range(1, 10)}


def scanned_files() -> list[Path]:
    """The files whose citations must resolve: library, chapters, benchmarks, tests, README."""
    patterns = ["medst/**/*.py", "book/*.ipynb", "book/*.md", "benchmarks/**/*.py", "benchmarks/**/*.md", "tests/*.py"]
    files = {p for pattern in patterns for p in ROOT.glob(pattern) if p.is_file()}
    if (ROOT / "README.md").is_file():
        files.add(ROOT / "README.md")
    return sorted(files)


def _strings(node) -> Iterator[str]:
    """Every string in a parsed JSON document (cell sources, outputs, metadata such as exercise stubs)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _strings(value)


def file_text(path: Path) -> str:
    """A file's text; a notebook's strings joined (so escaped characters in its JSON are read as written)."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":
        return "\n".join(_strings(json.loads(raw)))
    return raw


def page_sections(text: str) -> dict[str, int]:
    """Numbered headings of the page -> their level ("3": 2 for "## 3. MoVE", "3.4": 3 for "### 3.4 ...")."""
    return {number: len(hashes) for hashes, number in HEADING.findall(text)}


def citations(text: str) -> list[str]:
    """Every section number cited as "Method §..." in ``text``, in order, repeats kept."""
    return [number for match in CITATION.finditer(text) for number in CITED.findall(match.group(0))]


def display_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, body) of every ``$$ ... $$`` block; fails on an unclosed or inline-opened block."""
    blocks, body, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if body is None:
            if stripped.startswith("$$"):
                assert stripped == "$$", (
                    f"book/method.md:{number}: a display block must open with '$$' alone on its line"
                )
                body, start = [], number
        elif stripped.startswith("$$"):
            assert stripped == "$$", f"book/method.md:{number}: a display block must close with '$$' alone on its line"
            blocks.append((start, "\n".join(body)))
            body = None
        else:
            body.append(line)
    assert body is None, f"book/method.md:{start}: the '$$' opened here is never closed"
    return blocks


@pytest.fixture(scope="module")
def page() -> str:
    assert METHOD.is_file(), "book/method.md is missing: docstrings and chapters cite it as 'Method §N'"
    return METHOD.read_text(encoding="utf-8")


def test_page_has_sections_1_to_9_in_order(page):
    numbers = [number for hashes, number in HEADING.findall(page) if len(hashes) == 2]
    assert numbers == [str(n) for n in range(1, 10)], f"top-level sections of book/method.md: {numbers}"
    current = None
    for hashes, number in HEADING.findall(page):
        if len(hashes) == 2:
            current = number
        elif len(hashes) == 3:
            assert number.split(".")[0] == current and number.count(".") == 1, (
                f"sub-section {number} sits under section {current} of book/method.md"
            )


def test_every_method_citation_names_an_existing_section(page):
    sections = page_sections(page)
    missing, count = [], 0
    for path in scanned_files():
        for number in citations(file_text(path)):
            count += 1
            if number not in sections:
                missing.append(f"{path.relative_to(ROOT)}: Method §{number}")
    assert count > 0, "no 'Method §N' citation found: is the scan looking at the right files?"
    assert not missing, "citations of sections that book/method.md does not have:\n  " + "\n  ".join(missing)


def test_cited_top_level_sections_are_1_to_9():
    # A citation such as "Method §3.4" implies section 3; everything cited lies within sections 1-9.
    cited = {number.split(".")[0] for path in scanned_files() for number in citations(file_text(path))}
    assert cited <= SECTIONS, f"cited sections outside 1-9: {sorted(cited - SECTIONS)}"


def test_nothing_points_outside_the_repository():
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in scanned_files()
        for match in OUTSIDE.finditer(file_text(path))
    ]
    assert not found, "files that mention files outside the repository:\n  " + "\n  ".join(found)


def test_display_math_is_closed_and_every_equation_is_numbered_once(page):
    blocks = display_blocks(page)
    assert blocks, "book/method.md has no display equations"
    tags = []
    for line, body in blocks:
        found = TAG.findall(body)
        assert len(found) == 1, (
            f"book/method.md:{line}: a display equation carries exactly one \\tag{{S.k}}, got {found}"
        )
        # Sphinx wraps a display block that contains a line break in `split`, where MathJax rejects \tag.
        assert "\\\\" not in body, f"book/method.md:{line}: no '\\\\' line break in a tagged display equation"
        tags.append(found[0])
    duplicates = sorted({tag for tag in tags if tags.count(tag) > 1})
    assert not duplicates, f"equation numbers used twice in book/method.md: {duplicates}"
    labels = TARGET.findall(page)
    assert len(labels) == len(blocks), f"{len(blocks)} display equations but {len(labels)} (eq-...)= labels"
    assert len(set(labels)) == len(labels), (
        f"equation labels used twice: {sorted({x for x in labels if labels.count(x) > 1})}"
    )


def test_equations_are_numbered_by_section(page):
    """(S.1), (S.2), ... in order within section S, and each label directly above its equation."""
    expected = {}
    current = None
    lines = page.splitlines()
    for index, line in enumerate(lines):
        heading = HEADING.match(line)
        if heading and len(heading.group(1)) == 2:
            current = heading.group(2)
        found = TAG.search(line)
        if found and not line.startswith("%"):
            section, _, k = found.group(1).partition(".")
            assert section == current, (
                f"book/method.md:{index + 1}: equation ({found.group(1)}) is in section {current}"
            )
            expected[section] = expected.get(section, 0) + 1
            assert k == str(expected[section]), (
                f"book/method.md:{index + 1}: equation ({found.group(1)}) should be ({section}.{expected[section]})"
            )
    opening = [i for i, line in enumerate(lines) if line.strip() == "$$"][::2]
    for i in opening:
        assert i > 0 and TARGET.match(lines[i - 1]), f"book/method.md:{i + 1}: no (eq-...)= label on the line above"


def test_equation_and_section_references_on_the_page_resolve(page):
    """ "(6.9)" in the prose names an equation of the page; "section 3.4" names a heading of the page."""
    prose = re.sub(r"^\$\$\n.*?\n\$\$$", "", page, flags=re.S | re.M)
    prose = re.sub(r"`[^`]*`", "", prose)
    prose = re.sub(r"\$[^$\n]+\$", "", prose)
    prose = "\n".join(line for line in prose.splitlines() if not line.startswith("%"))
    tags = set(TAG.findall(page))
    equations = set(re.findall(r"\((\d+\.\d+)\)", prose))
    assert equations, "no equation reference found in the prose: is the pattern right?"
    assert equations <= tags, f"references to equations the page does not have: {sorted(equations - tags)}"
    sections = page_sections(page)
    referenced = set()
    for match in re.finditer(rf"\bsections?\s+({NUMBER}(?:(?:,\s*|\s+and\s+){NUMBER})*)", prose):
        referenced.update(re.findall(NUMBER, match.group(1)))
    assert referenced, "no 'section N' reference found in the prose: is the pattern right?"
    assert referenced <= set(sections), (
        f"references to sections the page does not have: {sorted(referenced - set(sections))}"
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Sum the pieces (Method §2).", ["2"]),
        ("(ours, Method §3.4) never", ["3.4"]),
        ("(Method §1, §6, §8)", ["1", "6", "8"]),
        ("(Method §2-§3, §7)", ["2", "3", "7"]),
        ("Method §5 step 3.", ["5"]),
        ("see §4 alone", []),
    ],
)
def test_citation_pattern(text, expected):
    assert citations(text) == expected

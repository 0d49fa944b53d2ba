"""Radiology report text (Method §1): sections, the text Med-ST trains on, word tokens.

A MIMIC-CXR report is free text with upper-case section headers, e.g.::

                                     FINAL REPORT
     EXAMINATION:  CHEST (PA AND LAT)
     INDICATION:  ___ with cough
     COMPARISON:  ___
     FINDINGS:
     No focal consolidation. ...
     IMPRESSION:  No acute cardiopulmonary process.

Med-ST uses *impression + findings* (in that order); when a report has neither section it falls back to the
report's last paragraph. A study is usable when that text has at least ``min_words`` word tokens
(lower-cased ``\\w+`` tokens).
"""

from __future__ import annotations

import re

# A header starts a line: upper-case words (letters, spaces and a little punctuation) followed by a colon.
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z0-9 ,/&()\-]*[A-Z)])[ \t]*:", re.MULTILINE)
_TITLE = re.compile(r"^\s*FINAL REPORT\s*$", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_WORD = re.compile(r"\w+")

# Other names some reports use for the two sections Med-ST keeps.
IMPRESSION_NAMES = ("impression", "impressions", "conclusion", "conclusions", "findings and impression")
FINDINGS_NAMES = ("findings",)


def normalise_whitespace(text: str) -> str:
    """Collapse every run of whitespace (spaces, tabs, new lines) into one space and strip the ends."""
    return " ".join(text.split())


def extract_sections(text: str) -> dict[str, str]:
    """Split a free-text report into its sections.

    Returns ``{section name (lower case, single spaces): section text (whitespace-normalised)}`` in the order
    the sections appear. Text before the first header (the "FINAL REPORT" title, a wet read) is not a section.
    A header repeated in one report (e.g. an addendum with its own IMPRESSION:) gets its texts joined.
    """
    sections: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    for k, match in enumerate(matches):
        name = normalise_whitespace(match.group(1)).lower()
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        body = normalise_whitespace(text[match.end() : end])
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def last_paragraph(text: str) -> str:
    """The last non-empty paragraph (blocks separated by blank lines), without a leading ``HEADER:``."""
    text = _TITLE.sub("", text)
    paragraphs = [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    if not paragraphs:
        return ""
    para = paragraphs[-1]
    header = _HEADER.match(para.lstrip("\n"))
    if header is not None:
        para = para.lstrip("\n")[header.end() :]
    return normalise_whitespace(para)


def _first_section(sections: dict[str, str], names: tuple[str, ...]) -> str:
    return " ".join(sections[n] for n in names if sections.get(n))


def join_sections(impression: str, findings: str) -> str:
    """Impression then findings (Method §1), whitespace-normalised; either may be empty."""
    return normalise_whitespace(f"{impression} {findings}")


def report_text(raw: str) -> str:
    """The text Med-ST trains on: impression + findings, or the last paragraph when neither section exists."""
    sections = extract_sections(raw)
    text = join_sections(_first_section(sections, IMPRESSION_NAMES), _first_section(sections, FINDINGS_NAMES))
    return text if text else last_paragraph(raw)


def word_tokens(text: str) -> list[str]:
    """Lower-cased ``\\w+`` tokens: the word count that decides whether a report is usable."""
    return _WORD.findall(text.lower())

"""Free-text radiology reports for the phantom, written like MIMIC-CXR's.

A report has a "FINAL REPORT" header and upper-case sections (EXAMINATION:, INDICATION:, TECHNIQUE:,
COMPARISON:, FINDINGS:, IMPRESSION:); some reports have an impression only. Sentences describe each
finding's current state *and* its change from the prior study ("Compared with the prior radiograph, the
right pleural effusion has increased."), in varied phrasings, with negations for absent findings. Every
mention of a present finding contains its head word (``effusion``, ``consolidation``, ``edema``,
``pneumothorax``, ``pneumonia``, ``cardiomegaly``) so that grounding can find it.

The same phrase generator builds the MS-CXR-T-style sentence pairs: two phrasings of one change
(paraphrase) or of opposite changes (contradiction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

CHANGES = ("improving", "stable", "worsening")

_SEVERITY = {  # mild, moderate, severe
    "pleural_effusion": (("small", "trace", "small"), ("moderate", "moderate-sized"), ("large", "large")),
    "consolidation": (("small", "patchy", "mild"), ("moderate", "dense"), ("extensive", "large", "dense")),
    "edema": (("mild", "mild"), ("moderate", "moderate"), ("severe", "marked")),
    "pneumothorax": (("small", "tiny", "small"), ("moderate", "moderate-sized"), ("large", "large")),
    "pneumonia": (("mild", "patchy"), ("moderate", "multifocal"), ("severe", "extensive")),
    "cardiomegaly": (("mild", "borderline"), ("moderate", "moderate"), ("severe", "marked")),
}
_LOBES = {
    ("right", "upper"): "right upper lobe",
    ("right", "middle"): "right middle lobe",
    ("right", "lower"): "right lower lobe",
    ("left", "upper"): "left upper lobe",
    ("left", "middle"): "lingular",
    ("left", "lower"): "left lower lobe",
}


@dataclass(frozen=True)
class FindingState:
    """One finding in one study, as the report needs it."""

    finding: str
    severity: float  # 0 = absent
    previous: float | None  # severity at the prior study; None for a patient's first study
    side: str  # "left", "right", "bilateral", ""
    change: str = ""  # improving / stable / worsening vs the prior study; "" if none or absent in both
    lobe: str = ""  # consolidation/pneumonia: "upper", "middle", "lower"
    lateral_only: bool = False  # pleural effusion seen on the lateral view only


class SentencePair(NamedTuple):
    """One MS-CXR-T-style temporal sentence pair: two sentences about one finding and how they relate."""

    sentence_1: str
    sentence_2: str
    category: str  # "paraphrase" | "contradiction"


def severity_band(severity: float) -> int:
    """0 mild (< 0.35), 1 moderate (< 0.65), 2 severe."""
    return 0 if severity < 0.35 else 1 if severity < 0.65 else 2


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _adjective(rng: np.random.Generator, finding: str, severity: float) -> str:
    return _pick(rng, _SEVERITY[finding][severity_band(severity)])


def noun(f: FindingState, rng: np.random.Generator) -> str:
    """The finding with its location, without a severity word: "right pleural effusion", "left lower lobe
    consolidation", "bilateral pleural effusions", "pulmonary edema", "cardiomegaly"."""
    name, side = f.finding, f.side
    if name == "pleural_effusion":
        if side == "bilateral":
            return _pick(rng, ("bilateral pleural effusions", "bilateral effusions"))
        return _pick(rng, (f"{side} pleural effusion", f"{side} pleural effusion", f"{side} effusion"))
    if name in ("consolidation", "pneumonia"):
        where = "bilateral" if side == "bilateral" else _LOBES.get((side, f.lobe), side)
        return f"{where} {name}"
    if name == "edema":
        return _pick(rng, ("pulmonary edema", "pulmonary edema", "interstitial edema"))
    if name == "pneumothorax":
        return _pick(rng, (f"{side} pneumothorax", f"{side} apical pneumothorax", f"{side}-sided pneumothorax"))
    if name == "cardiomegaly":
        return "cardiomegaly"
    raise ValueError(f"phantom.reports.noun: unknown finding {name!r}")


def _verbs(finding: str) -> tuple[str, str]:
    """(worse, better) past participles that suit the finding."""
    if finding in ("edema", "pneumonia"):
        return "worsened", "improved"
    if finding == "cardiomegaly":
        return "progressed", "decreased"
    return "increased", "decreased"


def state_sentence(f: FindingState, rng: np.random.Generator) -> str:
    """A present finding without reference to a prior study."""
    adj, n = _adjective(rng, f.finding, f.severity), noun(f, rng)
    if f.finding == "cardiomegaly":
        how = ("mildly", "moderately", "severely")[severity_band(f.severity)]
        s = _pick(
            rng,
            (
                f"{_cap(adj)} cardiomegaly.",
                f"The heart is {how} enlarged, consistent with cardiomegaly.",
                f"There is {adj} cardiomegaly.",
            ),
        )
    elif f.finding == "pneumonia":
        where = (
            "Bilateral opacities"
            if f.side == "bilateral"
            else f"Opacity in the {n.replace(' pneumonia', '').replace('lingular', 'lingula')}"
        )
        s = _pick(
            rng, (f"{_cap(adj)} {n}.", f"{where} concerning for pneumonia.", f"Findings are consistent with {adj} {n}.")
        )
    else:
        s = _pick(
            rng,
            (f"There is a {adj} {n}.", f"{_cap(adj)} {n}.", f"{_cap(adj)} {n} is present.", f"A {adj} {n} is seen."),
        )
        if n.endswith("s"):
            s = _pick(rng, (f"There are {adj} {n}.", f"{_cap(adj)} {n}.", f"{_cap(adj)} {n} are present."))
        elif f.finding == "edema":
            s = _pick(rng, (f"There is {adj} {n}.", f"{_cap(adj)} {n}."))
    if f.lateral_only:
        blunting = (
            "Blunting of both posterior costophrenic angles on the lateral view is consistent with small "
            "bilateral pleural effusions."
            if f.side == "bilateral"
            else f"Blunting of the {f.side} posterior costophrenic angle on the lateral view is consistent with a "
            f"small pleural effusion."
        )
        s = _pick(
            rng,
            (
                s[:-1] + ", seen only on the lateral view.",
                blunting,
                s[:-1] + ", visible on the lateral radiograph only.",
            ),
        )
    return s


def change_sentence(f: FindingState, change: str, rng: np.random.Generator) -> str:
    """A sentence describing ``change`` (improving / stable / worsening) of finding ``f`` since the prior study."""
    n = noun(f, rng)
    has, is_ = ("have", "are") if n.endswith("s") else ("has", "is")
    worse, better = _verbs(f.finding)
    prior = _pick(rng, ("the prior radiograph", "the prior study", "the previous examination", "prior"))
    now = f", now {_adjective(rng, f.finding, f.severity)}" if f.severity > 0 and rng.random() < 0.5 else ""
    if change == "worsening":
        if f.previous is not None and f.previous <= 0:
            adj = _adjective(rng, f.finding, f.severity)
            a_new = "new" if n.endswith("s") else "a new"
            options = [
                f"New {adj} {n}.",
                f"There {is_} {a_new} {adj} {n}, not present on {prior}.",
                f"Since {prior}, {'' if n.endswith('s') else 'a '}{adj} {n} {has} developed.",
            ]
        else:
            options = [
                f"Compared with {prior}, the {n} {has} {worse}{now}.",
                f"Interval increase in the {n}.",
                f"The {n} {is_} worse than on {prior}.",
                f"Worsening {n}.",
                f"{_cap(n)} {has} {worse} since {prior}{now}.",
            ]
    elif change == "improving":
        if f.severity <= 0:
            options = [
                f"The previously seen {n} {has} resolved.",
                f"Interval resolution of the {n}.",
                f"The {n} seen on {prior} {has} resolved.",
            ]
        else:
            options = [
                f"Compared with {prior}, the {n} {has} {better}{now}.",
                f"Interval decrease in the {n}.",
                f"The {n} {is_} improved compared with {prior}.",
                f"Improving {n}.",
                f"{_cap(n)} {has} {better} since {prior}{now}.",
            ]
    elif change == "stable":
        adj = _adjective(rng, f.finding, f.severity)
        options = [
            f"Unchanged {adj} {n}.",
            f"The {adj} {n} {is_} stable compared with {prior}.",
            f"Stable {adj} {n}.",
            f"No significant change in the {adj} {n} since {prior}.",
        ]
    else:
        raise ValueError(f"phantom.reports.change_sentence: unknown change {change!r}")
    s = _pick(rng, options)
    if f.lateral_only and f.severity > 0:
        s = s[:-1] + ", seen only on the lateral view."
    return s


_NEGATIONS = {
    "pleural_effusion": ("No pleural effusion.", "There is no pleural effusion.", "No effusion is seen."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen."),
    "consolidation": ("No focal consolidation.", "There is no focal consolidation.", "No consolidation."),
    "edema": ("No pulmonary edema.", "There is no pulmonary edema.", "No edema."),
    "pneumonia": ("No evidence of pneumonia.", "No radiographic evidence of pneumonia.", "No pneumonia."),
    "cardiomegaly": (
        "Heart size is normal.",
        "The cardiomediastinal silhouette is within normal limits.",
        "No cardiomegaly.",
    ),
}


def negations(absent: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Negative statements for some of the ``absent`` findings."""
    said = [f for f in absent if rng.random() < 0.6]
    out = []
    if "pleural_effusion" in said and "pneumothorax" in said and rng.random() < 0.6:
        out.append(
            _pick(rng, ("No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax."))
        )
        said = [f for f in said if f not in ("pleural_effusion", "pneumothorax")]
    return out + [_pick(rng, _NEGATIONS[f]) for f in said]


_NORMAL_IMPRESSION = (
    "No acute cardiopulmonary process.",
    "No acute intrathoracic abnormality.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
)
_INDICATIONS = (
    "___-year-old {sex} with shortness of breath.",
    "___-year-old {sex} with cough and fever, evaluate for pneumonia.",
    "Follow-up of known pleural effusion.",
    "Evaluate for interval change.",
    "___-year-old {sex} with chest pain.",
    "Dyspnea, evaluate for edema.",
    "History: ___ {sex} with hypoxia.",
    "Status post line placement, evaluate for pneumothorax.",
    "Fever, assess for infection.",
)


def _impression_sentence(f: FindingState, rng: np.random.Generator) -> str:
    n = noun(f, rng)
    c = f.change
    if c == "" or f.previous is None:
        return f"{_cap(_adjective(rng, f.finding, f.severity))} {n}."
    if c == "worsening":
        if f.previous <= 0:
            return f"New {n}."
        return _pick(rng, (f"Worsening {n}.", f"Increased {n}.", f"Progression of {n}."))
    if c == "improving":
        return (
            f"Resolved {n}."
            if f.severity <= 0
            else _pick(rng, (f"Improving {n}.", f"Decreased {n}.", f"Improved {n}."))
        )
    return _pick(rng, (f"Stable {n}.", f"Unchanged {n}."))


def make_report(
    states: Sequence[FindingState],
    *,
    view: str,
    lateral: bool,
    prior_date: str | None,
    sex: str,
    rng: np.random.Generator,
    findings_section: bool = True,
) -> str:
    """Write one study's report.

    Args:
        states: every finding's state in this study (absent ones included).
        view: "PA" or "AP"; lateral: whether the study has a lateral image.
        prior_date: the prior study's date as MM/DD/YYYY, or None for a patient's first study.
        sex: "man" / "woman"; rng: the study's random generator.
        findings_section: False writes an impression-only report.
    Returns:
        the report text (newline-terminated).
    """
    exam = f"CHEST ({view} AND LAT)" if lateral else ("CHEST (PA ONLY)" if view == "PA" else "CHEST (PORTABLE AP)")
    technique = f"Chest {view} and lateral." if lateral else f"Chest {view} view only."
    comparison = f"Chest radiograph from {prior_date}." if prior_date else "None."
    present = [f for f in states if f.severity > 0]
    resolved = [f for f in states if f.severity <= 0 and f.change == "improving"]
    absent = [f.finding for f in states if f.severity <= 0 and f.change != "improving"]

    body: list[str] = []
    order = list(present) + list(resolved)
    rng.shuffle(order)
    for f in order:
        if f.previous is None or f.change == "":
            body.append(state_sentence(f, rng) if f.severity > 0 else "")
        else:
            body.append(change_sentence(f, f.change, rng))
    body = [s for s in body if s] + negations(absent, rng)
    if not present and rng.random() < 0.5:
        body.insert(0, _pick(rng, ("The lungs are clear.", "Lungs are well expanded and clear.")))
    if rng.random() < 0.3:
        body.append(_pick(rng, ("No acute osseous abnormality.", "The osseous structures are unremarkable.")))

    if present or resolved:
        impression = " ".join(_impression_sentence(f, rng) for f in order)
    else:
        impression = _pick(rng, _NORMAL_IMPRESSION)
    if not findings_section:
        impression = " ".join(body) if body else impression

    lines = [
        "                                 FINAL REPORT",
        f" EXAMINATION:  {exam}",
        "",
        f" INDICATION:  {_pick(rng, _INDICATIONS).format(sex=sex)}",
        "",
        f" TECHNIQUE:  {technique}",
        "",
        f" COMPARISON:  {comparison}",
        "",
    ]
    if findings_section:
        lines += [" FINDINGS:", "", " " + " ".join(body), ""]
    lines += [" IMPRESSION:", "", " " + impression, ""]
    return "\n".join(lines)


def sentence_pairs(rng: np.random.Generator, n_pairs: int, findings: Sequence[str]) -> list[SentencePair]:
    """MS-CXR-T-style temporal sentence pairs, half paraphrases (two phrasings of the same change of the same
    finding) and half contradictions (the same finding improving in one sentence, worsening in the other).
    Returns ``n_pairs`` :class:`SentencePair` with distinct sentences per pair (Method §8)."""
    out: list[SentencePair] = []
    seen: set[tuple[str, str]] = set()
    tries = 0
    while len(out) < n_pairs:
        tries += 1
        if tries > 200 * n_pairs:
            raise RuntimeError("phantom.reports.sentence_pairs: could not find enough distinct pairs")
        finding = findings[int(rng.integers(len(findings)))]
        side = _pick(rng, ("left", "right")) if finding not in ("edema",) else ""
        lobe = _pick(rng, ("upper", "middle", "lower"))
        category = "paraphrase" if len(out) % 2 == 0 else "contradiction"
        if category == "paraphrase":
            changes = (_pick(rng, CHANGES),) * 2
        else:
            changes = ("improving", "worsening") if rng.random() < 0.5 else ("worsening", "improving")
        sentences = []
        before = float(rng.uniform(0.3, 0.6))
        for c in changes:
            after = before + {"improving": -0.2, "stable": 0.0, "worsening": 0.2}[c]
            state = FindingState(finding=finding, severity=after, previous=before, side=side, change=c, lobe=lobe)
            sentences.append(change_sentence(state, c, rng))
        key = (sentences[0], sentences[1])
        if sentences[0] == sentences[1] or key in seen:
            continue
        seen.add(key)
        out.append(SentencePair(sentences[0], sentences[1], category))
    return out

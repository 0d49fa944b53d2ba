"""Figures the chapters show: a patient's studies over time, label balance, loss curves.

Each function draws on matplotlib axes it creates (or is given) and returns the figure, so a chapter can
show it inline and a script can save it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from medst.data.images import read_image

FINDING_COLOURS = {
    "pleural_effusion": "tab:blue",
    "consolidation": "tab:orange",
    "edema": "tab:green",
    "pneumothorax": "tab:red",
    "pneumonia": "tab:purple",
    "cardiomegaly": "tab:brown",
}


def _mimic_path(root: Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    return root / "files" / f"p{str(subject_id)[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"


def draw_boxes(ax, boxes: pd.DataFrame, lw: float = 1.5) -> None:
    """Draw lesion boxes (columns finding, x_min, y_min, x_max, y_max) on image axes, coloured by finding."""
    for box in boxes.itertuples():
        colour = FINDING_COLOURS.get(box.finding, "yellow")
        ax.add_patch(
            Rectangle(
                (box.x_min, box.y_min), box.x_max - box.x_min, box.y_max - box.y_min, fill=False, ec=colour, lw=lw
            )
        )


def plot_patient(phantom_dir: str | Path, subject_id: int, *, show_boxes: bool = True, report_width: int = 38):
    """One patient's studies in time order: frontal and lateral images (with lesion boxes) and each report.

    Reads the phantom's MIMIC-CXR-JPG tree and its ``ground_truth`` tables.
    """
    phantom_dir = Path(phantom_dir)
    root = phantom_dir / "mimic-cxr-jpg"
    studies = pd.read_csv(phantom_dir / "ground_truth" / "studies.csv", keep_default_na=False)
    boxes = pd.read_csv(phantom_dir / "ground_truth" / "boxes.csv")
    mine = studies[studies.subject_id == subject_id].sort_values("study_index")
    if mine.empty:
        raise ValueError(f"subject {subject_id} is not in {phantom_dir / 'ground_truth' / 'studies.csv'}")
    n = len(mine)
    fig, axes = plt.subplots(3, n, figsize=(2.6 * n, 8.2), gridspec_kw={"height_ratios": [1, 1, 1.25]}, squeeze=False)
    for col, st in enumerate(mine.itertuples()):
        for row, view in enumerate(("frontal", "lateral")):
            ax = axes[row, col]
            ax.set_xticks([]), ax.set_yticks([])
            dicom_id = getattr(st, f"{view}_dicom_id")
            if not dicom_id:
                ax.text(0.5, 0.5, "no lateral", ha="center", va="center", transform=ax.transAxes, color="0.5")
                ax.set_facecolor("0.95")
                continue
            ax.imshow(read_image(_mimic_path(root, st.subject_id, st.study_id, dicom_id)), cmap="gray")
            if show_boxes:
                draw_boxes(ax, boxes[boxes.dicom_id == dicom_id])
            label = getattr(st, f"{view}_view")
            ax.set_title(f"t={st.study_index}  {label}" if row == 0 else label, fontsize=9)
        report = (
            root
            / "mimic-cxr-reports"
            / "files"
            / f"p{str(st.subject_id)[:2]}"
            / f"p{st.subject_id}"
            / f"s{st.study_id}.txt"
        ).read_text()
        body = report.split("FINDINGS:")[-1] if "FINDINGS:" in report else report.split("IMPRESSION:")[-1]
        text = "\n".join(textwrap.wrap(" ".join(body.split()), report_width)[:14])
        ax = axes[2, col]
        ax.axis("off")
        ax.text(0, 1, text, va="top", ha="left", fontsize=7, family="monospace", transform=ax.transAxes)
    handles = [Rectangle((0, 0), 1, 1, fill=False, ec=c, label=f.replace("_", " ")) for f, c in FINDING_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(f"patient {subject_id}: {n} studies over time", y=0.99)
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    return fig


def plot_progression_balance(progression: pd.DataFrame, findings: list[str] | None = None):
    """Stacked bars: share of improving / stable / worsening among the labelled consecutive pairs per finding."""
    findings = findings or [c[: -len("_progression")] for c in progression.columns if c.endswith("_progression")]
    order = ["improving", "stable", "worsening"]
    shares = pd.DataFrame({f: progression[f"{f}_progression"].value_counts(normalize=True) for f in findings}).T
    shares = shares.reindex(columns=order).fillna(0)
    fig, ax = plt.subplots(figsize=(7, 2.8))
    left = np.zeros(len(shares))
    for label, colour in zip(order, ("tab:green", "0.6", "tab:red")):
        ax.barh(shares.index.str.replace("_", " "), shares[label], left=left, color=colour, label=label)
        left += shares[label].to_numpy()
    ax.axvline(0.2, color="k", lw=0.8, ls=":")
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of labelled consecutive pairs")
    ax.legend(ncol=3, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.25), frameon=False)
    fig.tight_layout()
    return fig


def plot_loss_curves(metrics: pd.DataFrame, terms: list[str] | None = None, smooth: int = 5):
    """One panel per logged loss term of a ``metrics.csv``: raw values and a rolling mean."""
    terms = [t for t in (terms or ["loss", "global", "local", "temporal", "fmc", "rmr"]) if t in metrics]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.0 * len(terms), 2.7), squeeze=False)
    for ax, term in zip(axes[0], terms):
        ax.plot(metrics["step"], metrics[term], lw=1, alpha=0.4)
        ax.plot(metrics["step"], metrics[term].rolling(smooth, min_periods=1).mean(), lw=2)
        ax.set_title(term)
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig

"""The ablation's tables, chart and verdicts (chapter 9): from the per-run table of
:func:`medst.ablation.runs.run_ablation` to mean ± std per variant, a bar chart, and for each component
whether it helped on the task it targets (Method §3-§6).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medst.ablation.runs import ABLATION_METRICS, CHANCE_METRICS, VARIANT_ORDER, in_variant_order

# component -> (variant with it, variant without it, the metric that judges it)
COMPARISONS = (
    ("local alignment", "+local", "global", "grounding_acc"),  # judged against chance (see below)
    ("local remedy", "+local", "+local (published)", "grounding_acc"),
    ("MoVE", "+MoVE", "+local", "lateral_auc"),
    ("MoVE experts", "+MoVE", "two views, shared FFN", "lateral_auc"),
    ("FMC", "+FMC", "+MoVE", "progression_acc"),
    ("RMR", "+RMR", "+MoVE", "progression_acc"),
    ("FMC + RMR", "Med-ST", "+MoVE", "progression_acc"),
    # when the temporal term joins, judged on both targets it touches
    ("temporal term held back (global)", "Med-ST", "Med-ST, temporal from step 0", "retrieval_r@5"),
    ("temporal term held back (temporal)", "Med-ST", "Med-ST, temporal from step 0", "progression_acc"),
)


def ablation_verdicts(table: pd.DataFrame, noise_floor: float = 0.02) -> pd.DataFrame:
    """For each component, its variant against the variant without it, on the component's target metric.

    ``difference`` = mean(with) - mean(without) over seeds; ``se`` its standard error (None with one seed).
    Verdict: "helped" / "hurt" when |difference| > 2·se (with several seeds) or > ``noise_floor`` (one seed),
    else "no clear difference". The local alignment has no "without" (a model without the local branch
    cannot point), so the component "local alignment" is judged against the pointing game's chance level
    instead; other grounding comparisons (the "local remedy": our token weights against the published learned
    ones) compare two variants like every other component. "MoVE experts" sets MoVE against the same two views
    through one shared feed-forward.
    """
    rows = []
    for component, with_, without, metric in COMPARISONS:
        a = table.loc[table["variant"] == with_, metric].dropna().to_numpy(float) if metric in table else []
        if len(a) == 0:
            continue
        if component == "local alignment":
            b, reference = table.loc[table["variant"] == with_, "grounding_chance"].dropna().to_numpy(float), "chance"
        else:
            b = table.loc[table["variant"] == without, metric].dropna().to_numpy(float)
            reference = without
        if len(b) == 0:
            continue
        diff = float(a.mean() - b.mean())
        se = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))) if len(a) > 1 and len(b) > 1 else None
        margin = 2 * se if se is not None else noise_floor
        verdict = "helped" if diff > margin else "hurt" if diff < -margin else "no clear difference"
        if se is None:
            verdict += " (one seed: no error bar)"
        rows.append(
            {
                "component": component,
                "metric": metric,
                "with": with_,
                "against": reference,
                "mean_with": float(a.mean()),
                "mean_against": float(b.mean()),
                "difference": diff,
                "se": se,
                "seeds": int(min(len(a), len(b))),
                "verdict": verdict,
            }
        )
    return pd.DataFrame(rows)


def summarise_ablation(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant: mean and standard deviation over seeds of every metric (columns ``metric_mean``/``_std``)."""
    numeric = [c for c in table.columns if c not in ("variant", "seed")]
    grouped = table.groupby("variant", observed=True)[numeric]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    summary = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    summary.insert(0, "seeds", table.groupby("variant", observed=True)["seed"].nunique())
    return summary[["seeds"] + [f"{c}_{s}" for c in numeric for s in ("mean", "std")]]


def ablation_markdown(summary: pd.DataFrame, metrics: Sequence[str] = tuple(ABLATION_METRICS)) -> str:
    """A markdown table "mean ± std" of the chosen metrics (— where a variant has no value)."""
    cols = [m for m in metrics if f"{m}_mean" in summary.columns]
    head = "| variant | seeds | " + " | ".join(f"{ABLATION_METRICS[m][0]} ({ABLATION_METRICS[m][1]})" for m in cols)
    lines = [head + " |", "|" + "---|" * (len(cols) + 2)]
    for name, row in summary.iterrows():
        cells = []
        for m in cols:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            cells.append("—" if not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}")
        lines.append(f"| {name} | {int(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_ablation(summary: pd.DataFrame, metrics: Sequence[str] = tuple(ABLATION_METRICS), chance=None):
    """Bar chart: one panel per metric, one bar per variant (mean ± std over seeds), chance as a dashed line.

    ``chance``: {metric: value} drawn as reference lines (default: from the summary's chance columns).
    Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    cols = [m for m in metrics if f"{m}_mean" in summary.columns]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.1 * len(cols), 3.2), squeeze=False)
    names = [str(n) for n in summary.index]
    colours = plt.get_cmap("tab10")(np.arange(len(names)) % 10)
    for ax, m in zip(axes[0], cols):
        mean, std = summary[f"{m}_mean"].to_numpy(float), summary[f"{m}_std"].to_numpy(float)
        ax.bar(range(len(names)), np.nan_to_num(mean), yerr=np.nan_to_num(std), color=colours, capsize=3)
        for i in np.flatnonzero(~np.isfinite(mean)):
            ax.text(i, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        ref = (chance or {}).get(m, CHANCE_METRICS.get(m))
        if isinstance(ref, str) and f"{ref}_mean" in summary.columns:
            ref = float(np.nanmean(summary[f"{ref}_mean"]))
        if isinstance(ref, (int, float)):
            ax.axhline(ref, ls="--", c="k", lw=1, label="chance")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{ABLATION_METRICS[m][0]}\n({ABLATION_METRICS[m][1]})", fontsize=9)
        ax.set_ylim(0, 1.0)
    fig.tight_layout()
    return fig


def write_ablation(table: pd.DataFrame, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``ablation_runs.csv`` (one row per run), ``ablation.csv``/``.json``/``.md`` (mean ± std) and
    ``ablation.png`` (bar chart) under ``out_dir``; returns their paths."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise_ablation(table)
    paths = {
        "runs": out / "ablation_runs.csv",
        "csv": out / "ablation.csv",
        "json": out / "ablation.json",
        "markdown": out / "ablation.md",
        "chart": out / "ablation.png",
    }
    table.to_csv(paths["runs"], index=False)
    summary.to_csv(paths["csv"])
    records = {
        str(k): {c: (None if not math.isfinite(v) else float(v)) for c, v in row.items()}
        for k, row in summary.iterrows()
    }
    paths["json"].write_text(json.dumps(records, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(ablation_markdown(summary) + "\n")
    fig = plot_ablation(summary)
    fig.savefig(paths["chart"], dpi=120, bbox_inches="tight")
    plt.close(fig)  # written, not shown
    return paths


def read_ablation(source: str | os.PathLike) -> pd.DataFrame:
    """Read an ``ablation_runs.csv`` written by :func:`write_ablation` (a path or a URL) back into the table
    :func:`run_ablation` returns, variants in their usual order; raises ``ValueError`` if it is not one."""
    table = pd.read_csv(source)
    missing = {"variant", "seed"} - set(table.columns)
    if missing:
        raise ValueError(f"{source} is not an ablation table: no column(s) {sorted(missing)}")
    unknown = set(table["variant"]) - set(VARIANT_ORDER)
    if unknown:
        raise ValueError(f"{source}: unknown variant(s) {sorted(unknown)}")
    return in_variant_order(table)


def compare_variants(runs: pd.DataFrame, a: str, b: str, metric: str) -> str | None:
    """One plain sentence comparing variant ``a`` with ``b`` on ``metric`` over the seeds of a per-run table
    (columns ``variant`` and ``metric``): "0.412 vs 0.398: higher than b", "... lower than b" or "... no clear
    difference from b". A difference counts when it is larger than twice its standard error (Welch: the two
    variances over their seed counts). None when either variant has fewer than two finite values."""
    if metric not in runs:
        return None
    x = pd.to_numeric(runs.loc[runs["variant"] == a, metric], errors="coerce").dropna().to_numpy(float)
    y = pd.to_numeric(runs.loc[runs["variant"] == b, metric], errors="coerce").dropna().to_numpy(float)
    if len(x) < 2 or len(y) < 2:
        return None
    diff = x.mean() - y.mean()
    se = math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
    if diff > 2 * se:
        return f"{x.mean():.3f} vs {y.mean():.3f}: higher than {b}"
    if diff < -2 * se:
        return f"{x.mean():.3f} vs {y.mean():.3f}: lower than {b}"
    return f"{x.mean():.3f} vs {y.mean():.3f}: no clear difference from {b}"

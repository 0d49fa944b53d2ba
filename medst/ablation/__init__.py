"""Ablations of Med-ST: which component buys what (chapter 9, ``benchmarks/ablations.py``).

:mod:`medst.ablation.runs` defines the variants, trains and scores them (:func:`run_ablation`);
:mod:`medst.ablation.report` turns the per-run table into tables, a chart and verdicts. Every name of both is
importable from here.
"""

from medst.ablation.report import (
    COMPARISONS,
    ablation_markdown,
    ablation_verdicts,
    compare_variants,
    plot_ablation,
    read_ablation,
    summarise_ablation,
    write_ablation,
)
from medst.ablation.runs import (
    ABLATION_METRICS,
    ABLATION_METRICS_FILE,
    CHANCE_METRICS,
    RANDOM_METRICS_FILE,
    VARIANT_ORDER,
    VARIANTS,
    Variant,
    ablation_metrics,
    ablation_run_dir,
    frontal_only,
    in_variant_order,
    parse_variants,
    reusable_run,
    run_ablation,
    variant_slug,
)

__all__ = [
    "compare_variants",
    "ABLATION_METRICS",
    "ABLATION_METRICS_FILE",
    "CHANCE_METRICS",
    "COMPARISONS",
    "RANDOM_METRICS_FILE",
    "VARIANTS",
    "VARIANT_ORDER",
    "Variant",
    "ablation_markdown",
    "ablation_metrics",
    "ablation_run_dir",
    "reusable_run",
    "ablation_verdicts",
    "frontal_only",
    "in_variant_order",
    "parse_variants",
    "plot_ablation",
    "read_ablation",
    "run_ablation",
    "summarise_ablation",
    "variant_slug",
    "write_ablation",
]

"""Med-ST and its neighbours MPMA and UniMedI on the same phantom, with the same budget and the same evaluation
(chapters 10 and 11).

Rows (each trained for every seed with the profile's configuration and the same --set overrides):

    random init  the Med-ST architecture, untrained (one per seed)
    global       image-report InfoNCE only, frontal view only (the ablation's "global", benchmarks/ablations.py)
    Med-ST       the full model: local alignment, MoVE (both views), temporal objective
    MPMA         paired masking, MA-CMF reconstruction and GLA (medst.neighbours.mpma), frontal view only
    UniMedI      one ViT for radiographs and CT volumes, text-guided slice selection (medst.neighbours.unimedi),
                 frontal view only; no local branch

The phantom has CT volumes (``data.ct_fraction``: that share of its patients has one volume of one study, which
shares the study's report). UniMedI trains on them beside the radiographs; the other rows never see a volume.

Same budget: the same steps, batches (S sequences of L studies plus singles) and learning-rate schedule for every
row; an MPMA step costs more than a Med-ST step (its towers run once on the pair and once on the masked pair), a
UniMedI step also reads ``model.unimedi.volumes_per_batch`` volume-report pairs.
Same evaluation: the ablation's target tasks (:func:`medst.ablation.ablation_metrics`: image->report recall@5,
progression probe, temporal sentence AUC, lateral-only finding probe, pointing game) plus RSNA zero-shot AUC, the
COVIDx linear probe at 100 % of the labels and, on the CT volumes (:mod:`medst.eval.volumes`), the volume finding
probe AUC and slice-selection precision@k; models that read one view are scored on frontal views, and models
without a 3-D path read a volume as the mean slices of its slabs through their 2-D path. A model without a local
branch (global, UniMedI) has no pointing game ("—").

The committed table is the cpu profile's, with the committed ablation's budget (benchmarks/ablations/cpu), on a
phantom where half of the patients have a CT volume:

    python benchmarks/neighbours.py --profile cpu --seeds 0,1,2 --set train.steps=1200 \
        --set data.ct_fraction=0.5 --threads 1 --out benchmarks/neighbours
    python benchmarks/neighbours.py --dry-run          # the plan only: runs, overrides, folders; nothing trained
    python benchmarks/neighbours.py --profile ci --seeds 0 --set train.steps=5 --set data.ct_fraction=0.5 \
        --out /tmp/neighbours-ci

Writes under --out: comparison_runs.csv (one row per run), comparison.csv (mean and std over seeds) and
comparison.md (the table, with the command). The runs and the phantom live under --work (default
benchmarks/results/neighbours-<profile>, not tracked); running the script again reuses finished runs and their
metrics (comparison_metrics.json in each run folder, kept with the evaluation options and the list of metrics), so a
stopped comparison continues where it was, and a run scored before a metric was added is scored again (its
training is reused).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from medst.ablation import (
    VARIANTS,
    Variant,
    ablation_metrics,
    ablation_run_dir,
    frontal_only,
    reusable_run,
    summarise_ablation,
)
from medst.book.chapter import setup
from medst.config import load_profile
from medst.eval import TaskSkipped
from medst.eval.embed import EvalModel, load_model
from medst.eval.finetune import covidx
from medst.eval.run import finite_only, write_results
from medst.eval.tasks import missing_file
from medst.eval.volumes import slice_selection, volume_finding_probe
from medst.eval.zeroshot import rsna_zero_shot
from medst.train.loop import pretrain

ROOT = Path(__file__).resolve().parents[1]
_ABLATION = {v.name: v for v in VARIANTS}
COMPARED = (
    _ABLATION["global"],
    _ABLATION["Med-ST"],
    Variant(
        "MPMA",
        ("model.method=mpma",),
        lateral=False,
        note="paired masking, MA-CMF reconstruction, global and local alignment (one view)",
    ),
    Variant(
        "UniMedI",
        ("model.method=unimedi",),
        lateral=False,
        note="radiographs and CT volumes in one ViT, text-guided slice selection (one view, no local branch)",
    ),
)
ORDER = ("random init", *(v.name for v in COMPARED))
BASELINE_ARCHITECTURE = "Med-ST"  # the random-init row is this variant's architecture, untrained
# metric -> its column title; the chance level of each: a number, or the column holding it
METRICS = {
    "retrieval_r@5": "image→report R@5",
    "progression_acc": "progression probe acc.",
    "sentence_auc": "temporal sentence AUC",
    "lateral_auc": "lateral-only probe AUC",
    "grounding_acc": "pointing game acc.",
    "rsna_auc": "RSNA zero-shot AUC",
    "covidx_probe_acc": "COVIDx probe acc.",
    "volume_auc": "CT volume probe AUC",
    "slice_precision": "slice selection precision@k",
}
CHANCE = {
    "retrieval_r@5": "retrieval_chance@5",
    "progression_acc": "progression_majority",
    "sentence_auc": 0.5,
    "lateral_auc": 0.5,
    "grounding_acc": "grounding_chance",
    "rsna_auc": 0.5,
    "covidx_probe_acc": "covidx_majority",
    "volume_auc": 0.5,
    "slice_precision": "slice_chance",
}
METRICS_FILE = "comparison_metrics.json"  # in a run folder: its metrics with the options they were computed with
RANDOM_METRICS_FILE = "comparison_random_metrics.json"  # the random-init row, in the baseline architecture's run


def comparison_metrics(
    em: EvalModel,
    data_root: str | Path,
    *,
    lateral: bool,
    seed: int,
    max_pairs: int | None,
    max_studies: int | None,
    max_volumes: int | None = None,
) -> dict[str, float]:
    """The ablation's target tasks (:func:`medst.ablation.ablation_metrics`) plus RSNA zero-shot, the COVIDx
    linear probe on all training labels (no fine-tuning) and, when the phantom has CT volumes, the volume finding
    probe and slice selection (:mod:`medst.eval.volumes`; ``max_volumes`` of them, None: all); ``lateral`` as
    the model was trained."""
    root = Path(data_root)
    out = ablation_metrics(
        em, root, lateral=lateral, seed=seed, max_pairs=max_pairs, max_studies=max_studies, progress=False
    )
    out["rsna_auc"] = rsna_zero_shot(em, root, progress=False)["auc"]
    probe = covidx(em, root, fractions=(1.0,), finetune=False, seed=seed, progress=False)
    out["covidx_probe_acc"], out["covidx_majority"] = probe["probe_acc@100%"], probe["majority"]
    if missing_file(root, "volume-probe") is None:  # a phantom with CT volumes
        try:
            vol = volume_finding_probe(em, root, seed=seed, max_volumes=max_volumes, progress=False)
            out["volume_auc"] = vol["auc"]
        except TaskSkipped as why:
            print(f"neighbours: no CT volume probe: {why}")
        sel = slice_selection(em, root, max_volumes=max_volumes, seed=seed, progress=False)
        out["slice_precision"], out["slice_chance"] = sel["precision@k"], sel["chance"]
    return finite_only(out, "neighbours")


def cached(path: Path, key: dict[str, Any], compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``compute()``, or the metrics ``path`` holds if they were computed with the same ``key``; fresh metrics are
    written to ``path`` as ``{key, metrics}``."""
    key = json.loads(json.dumps(key))
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") == key and isinstance(saved.get("metrics"), dict):
            return saved["metrics"]
    except (OSError, ValueError, AttributeError):
        pass
    metrics = compute()
    write_results({"key": key, "metrics": metrics}, path)
    return metrics


def plan(profile: str, seeds: Sequence[int], work: Path, overrides: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per (variant, seed): its run folder, its full overrides and the views it is trained and scored on."""
    return [
        {
            "variant": v.name,
            "seed": s,
            "run": ablation_run_dir(work, v.name, s),
            "overrides": [*overrides, *v.overrides, f"train.seed={s}"],
            "views": "frontal + lateral" if v.lateral else "frontal only",
            "lateral": v.lateral,
        }
        for s in seeds
        for v in COMPARED
    ]


def run_comparison(
    profile: str,
    seeds: Sequence[int],
    work: str | Path,
    *,
    data_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    max_pairs: int | None = 2000,
    max_studies: int | None = 300,
    max_volumes: int | None = None,
    random_baseline: bool = True,
) -> pd.DataFrame:
    """Train every row of :data:`COMPARED` for every seed on the profile's phantom and score it; one row per run
    (plus one "random init" row per seed), in :data:`ORDER`."""
    work = Path(work)
    ctx = setup(profile, data_dir if data_dir is not None else work / "_data", 0, device, list(overrides))
    phantom, prepared = ctx.phantom_dir, ctx.prepared_dir
    prepared_frontal = frontal_only(prepared, ctx.data_dir / f"{prepared.name}-frontal")

    def score(run: Path, options: dict[str, Any], random_seed: int | None = None) -> dict[str, float]:
        random = random_seed is not None
        em = load_model(run, ctx.device, random_init=random, seed=random_seed if random else 0)
        return comparison_metrics(em, phantom, **options)

    rows = []
    for job in plan(profile, seeds, work, overrides):
        run = job["run"]
        cfg = load_profile(profile, job["overrides"])
        if not reusable_run(run, cfg):
            for stale in (METRICS_FILE, RANDOM_METRICS_FILE):
                (run / stale).unlink(missing_ok=True)
            print(f"training {job['variant']} seed {job['seed']} -> {run}", flush=True)
            pretrain(cfg, prepared if job["lateral"] else prepared_frontal, run, device=str(ctx.device), progress=False)
        options = {
            "lateral": job["lateral"],
            "seed": job["seed"],
            "max_pairs": max_pairs,
            "max_studies": max_studies,
            "max_volumes": max_volumes,
        }
        scored = {"metrics": list(METRICS), **options}  # a metric added since: scored again, training reused
        metrics = cached(
            run / METRICS_FILE,
            {"variant": job["variant"], **scored},
            partial(score, run, options),
        )
        rows.append({"variant": job["variant"], "seed": job["seed"], **metrics})
        if random_baseline and job["variant"] == BASELINE_ARCHITECTURE:
            metrics = cached(
                run / RANDOM_METRICS_FILE,
                {"variant": "random init", "architecture": BASELINE_ARCHITECTURE, **scored},
                partial(score, run, options, job["seed"]),
            )
            rows.append({"variant": "random init", "seed": job["seed"], **metrics})
    return in_order(pd.DataFrame(rows))


def in_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by variant (:data:`ORDER`, only those present) and seed."""
    present = [v for v in ORDER if v in set(table["variant"])]
    table["variant"] = pd.Categorical(table["variant"], categories=present, ordered=True)
    return table.sort_values(["variant", "seed"]).reset_index(drop=True)


def comparison_markdown(summary: pd.DataFrame) -> str:
    """The table "mean ± std over seeds" of :data:`METRICS`, a dash where a model cannot be scored (no local
    branch: no pointing game), and a last line with each metric's chance level."""
    cols = [m for m in METRICS if f"{m}_mean" in summary.columns]
    lines = ["| | seeds | " + " | ".join(METRICS[m] for m in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for name, row in summary.iterrows():
        cells = [
            "—" if not math.isfinite(row[f"{m}_mean"]) else f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}"
            for m in cols
        ]
        lines.append(f"| {name} | {int(row['seeds'])} | " + " | ".join(cells) + " |")
    chance = []
    for m in cols:
        ref = CHANCE[m]
        if isinstance(ref, str):
            ref = summary[f"{ref}_mean"].mean() if f"{ref}_mean" in summary.columns else math.nan
        chance.append("—" if not math.isfinite(ref) else f"{ref:.3f}")
    lines.append("| chance | | " + " | ".join(chance) + " |")
    return "\n".join(lines)


def write_comparison(table: pd.DataFrame, out: str | Path, command: str) -> dict[str, Path]:
    """comparison_runs.csv, comparison.csv and comparison.md (the table under the command that made it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise_ablation(table)
    paths = {"runs": out / "comparison_runs.csv", "csv": out / "comparison.csv", "markdown": out / "comparison.md"}
    table.to_csv(paths["runs"], index=False)
    summary.to_csv(paths["csv"])
    seeds = ", ".join(str(s) for s in sorted(table["seed"].unique()))
    paths["markdown"].write_text(
        f"Mean ± std over seeds {seeds}; made by\n\n```bash\n{command}\n```\n\n" + comparison_markdown(summary) + "\n"
    )
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", help="ci, cpu, gpu or a YAML file (default cpu)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "neighbours"), help="where the tables go")
    parser.add_argument("--work", default=None, help="runs and phantom (default benchmarks/results/neighbours-PROFILE)")
    parser.add_argument("--data-dir", default=None, help="the phantom and prepared index (default WORK/_data)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, e.g. --set train.steps=1200 (repeatable)",
    )
    parser.add_argument("--max-pairs", type=int, default=2000, help="progression-probe pairs (default 2000)")
    parser.add_argument("--max-studies", type=int, default=300, help="studies for the lateral probe and pointing game")
    parser.add_argument("--max-volumes", type=int, default=None, help="CT volumes for their probe and slice selection")
    parser.add_argument("--no-random-baseline", action="store_true", help="leave out the random-init rows")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit: nothing is trained")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work) if args.work else ROOT / "benchmarks" / "results" / f"neighbours-{Path(args.profile).stem}"
    command = "python benchmarks/neighbours.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    if args.dry_run:
        for variant in COMPARED:
            load_profile(args.profile, [*args.overrides, *variant.overrides])  # every run's overrides are valid
        steps = load_profile(args.profile, args.overrides).train.steps
        print(f"profile {args.profile}: {steps} steps per run, seeds {seeds}; runs under {work}, tables to {args.out}")
        for job in plan(args.profile, seeds, work, args.overrides):
            print(f"  {job['variant']:<8s} seed {job['seed']}  {job['views']:<17s}  {' '.join(job['overrides'])}")
            print(f"           -> {job['run']}")
        if not args.no_random_baseline:
            print(f"  random init: the {BASELINE_ARCHITECTURE} architecture of each seed, untrained")
        print("evaluation: " + ", ".join(METRICS.values()))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    table = run_comparison(
        args.profile,
        seeds,
        work,
        data_dir=args.data_dir,
        overrides=args.overrides,
        device=args.device,
        max_pairs=args.max_pairs,
        max_studies=args.max_studies,
        max_volumes=args.max_volumes,
        random_baseline=not args.no_random_baseline,
    )
    paths = write_comparison(table, args.out, command)
    print(paths["markdown"].read_text())
    print(
        json.dumps(
            {
                "profile": args.profile,
                "seeds": seeds,
                "runs": len(table),
                "seconds": round(time.perf_counter() - start, 1),
                "files": {k: str(v) for k, v in paths.items()},
            }
        )
    )


if __name__ == "__main__":
    main()

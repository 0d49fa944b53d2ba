"""Ablations of Med-ST on the phantom: which component buys what (chapter 9).

Pre-trains every variant for every seed, then scores each on its component's target task:

    global                 image-report InfoNCE only, frontal view only
    +local                 + modality-weighted local alignment (our token weights)  -> pointing game (grounding)
    +local (published)     +local with the published learned token weights (collapse) -> pointing game
    +MoVE                  + the lateral view through MoVE                   -> lateral-only finding probe
    two views, shared FFN  +MoVE without experts: one shared feed-forward    -> lateral-only finding probe
    +FMC                   + temporal objective, forward classification only -> progression probe
    +RMR                   + temporal objective, reverse regression only     -> progression probe
    Med-ST                 + FMC and RMR: the full model

plus a randomly initialised model of the full architecture. "Without MoVE" means trained and evaluated on
frontal views only (a copy of the prepared index with the laterals removed).

    python benchmarks/ablations.py --profile ci --seeds 0,1,2 --out results/ablation
    python benchmarks/ablations.py --out results/ablation --variants "+MoVE,two views, shared FFN"
    python benchmarks/ablations.py --out results/ablation --variants plus-MoVE,two_views_shared_FFN

--variants takes a comma-separated list of names; a name holding a comma ("two views, shared FFN") is
recognised whole, and each variant may also be named by its run folder (no spaces or parentheses, so no
quotes needed): plus-local, plus-local_published, plus-MoVE, two_views_shared_FFN, ...

Writes under --out: ablation_runs.csv (one row per run), ablation.csv / .json / .md (mean ± std over seeds)
and ablation.png (bar chart); the runs themselves under --out/runs. Running the script again reuses both the
trained runs and their metrics (runs/*/metrics.json, kept with the evaluation options they were computed
with), so a stopped ablation continues where it was.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from medst.ablation import (
    VARIANTS,
    ablation_markdown,
    parse_variants,
    run_ablation,
    summarise_ablation,
    variant_slug,
    write_ablation,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci", help="ci, cpu, gpu or a YAML file (default ci)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--data-dir", default=None, help="where the phantom and prepared index live (default OUT/_data)"
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of "
        + "; ".join(f"{v.name!r} ({variant_slug(v.name)})" for v in VARIANTS)
        + " (quote names with spaces, or use the folder names in parentheses)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, e.g. --set train.steps=20 (repeatable)",
    )
    parser.add_argument("--max-pairs", type=int, default=2000, help="progression-probe pairs (default 2000)")
    parser.add_argument(
        "--max-studies", type=int, default=300, help="studies for the lateral probe and the pointing game (default 300)"
    )
    parser.add_argument("--no-random-baseline", action="store_true", help="leave out the random-init row")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        variants = parse_variants(args.variants)
    except ValueError as err:
        parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    table = run_ablation(
        args.profile,
        [int(s) for s in args.seeds.split(",")],
        args.out,
        data_dir=args.data_dir,
        variants=variants,
        overrides=args.overrides,
        device=args.device,
        random_baseline=not args.no_random_baseline,
        max_pairs=args.max_pairs,
        max_studies=args.max_studies,
    )
    paths = write_ablation(table, args.out)
    print(ablation_markdown(summarise_ablation(table)))
    print(
        json.dumps(
            {
                "profile": args.profile,
                "seeds": args.seeds,
                "runs": len(table),
                "seconds": round(time.perf_counter() - start, 1),
                "files": {k: str(v) for k, v in paths.items()},
            }
        )
    )


if __name__ == "__main__":
    main()

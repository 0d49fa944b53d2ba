"""Does the global loss leave its plateau (2 ln B)? One run, judged by its training curve and validation retrieval.

The book model's global loss can sit at 2 ln B (every report equally likely for every image) for thousands of
steps, on one phantom longer than on another (benchmarks/RESULTS.md, "The cpu book model"). This script trains one
configuration on a phantom made with its own seed, so that the phantoms the targets are scored on stay unused for
the choice, and reports:

* the global loss, averaged over windows of ``--window`` steps, beside 2 ln B;
* image <-> report recall@5 on the phantom's **validation** split (never the test split), and what random init
  scores;
* for ``--variant full``, chapter 7's other two targets: the progression probe on the validation-split patients and
  the temporal sentence AUC.

    python benchmarks/plateau.py --name base --variant global --steps 1200
    python benchmarks/plateau.py --name tau02 --variant global --steps 1200 --set loss.global_temperature=0.2
    python benchmarks/plateau.py --name full --variant full --steps 4000
    python benchmarks/plateau.py --name x --dry-run     # the configuration and folders only

``--record benchmarks/plateau/runs.jsonl`` keeps the summary there too (chapter 7 reads that file).

``--variant global`` is the ablation's "global" row (frontal views only, no local or temporal term); ``full`` is the
profile as it is (with ``--set loss.temporal_start=0`` the temporal term trains from the first step, as before the
profile held it back). The training seed is the phantom's unless ``--set train.seed=N`` (as in the chapters). A finished
run in ``--work/runs/NAME`` is reused if it was trained with the same configuration, else trained again. One JSON
line goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch

from medst.ablation import frontal_only, reusable_run
from medst.book.chapter import setup
from medst.config import load_profile
from medst.eval.embed import load_model
from medst.eval.retrieval import retrieval
from medst.eval.run import evaluate
from medst.train.loop import pretrain

GLOBAL_ONLY = ("loss.local_weight=0", "loss.temporal_weight=0")
PROBES = "temporal-text,progression-probe"  # scored for --variant full


def plateau_run(
    name: str,
    *,
    variant: str = "global",
    steps: int = 1200,
    overrides: tuple[str, ...] = (),
    profile: str = "cpu",
    phantom_seed: int = 2,
    work: str | Path = "benchmarks/results/plateau",
    window: int = 200,
    dry_run: bool = False,
) -> dict:
    """Train (or reuse) one run and score it; returns the JSON-ready summary (see the module docstring)."""
    if variant not in ("global", "full"):
        raise ValueError(f"--variant must be global or full, not {variant!r}")
    extra = (*(GLOBAL_ONLY if variant == "global" else ()), f"train.steps={steps}", *overrides)
    cfg = load_profile(profile, list(extra))
    if not any(o.startswith("train.seed=") for o in extra):
        cfg.train.seed = phantom_seed  # as the chapters do (medst.book.chapter.setup)
    work = Path(work)
    run = work / "runs" / name
    pairs = cfg.train.sequences_per_batch * cfg.data.sequence_length + cfg.train.singles_per_batch
    out = {
        "name": name,
        "variant": variant,
        "overrides": list(extra),
        "phantom_seed": phantom_seed,
        "train_seed": cfg.train.seed,
        "run": str(run),
        "two_ln_B": round(2 * math.log(pairs), 3),
    }
    if dry_run:
        return out
    ctx = setup(profile, work / "data", phantom_seed, "auto")
    prepared = ctx.prepared_dir
    if variant == "global":
        prepared = frontal_only(prepared, ctx.data_dir / f"{prepared.name}-frontal")
    start = time.perf_counter()
    if not reusable_run(run, cfg):  # a run of another configuration is trained again
        pretrain(cfg, prepared, run, device=str(ctx.device), progress=False)
    metrics = pd.read_csv(run / "metrics.csv")
    ends = range(window, int(metrics["step"].max()) + 1, window)
    out["global_by_step"] = {
        int(e): round(float(metrics.loc[(metrics.step > e - window) & (metrics.step <= e), "global"].mean()), 3)
        for e in ends
    }
    root = ctx.phantom_dir / "mimic-cxr-jpg"
    for tag, em in (("", load_model(run, ctx.device)), ("random_", load_model(run, ctx.device, random_init=True))):
        r = retrieval(em, root, progress=False, split="validate")
        out[f"{tag}val_i2t_r@5"], out[f"{tag}val_t2i_r@5"] = round(r["i2t_r@5"], 3), round(r["t2i_r@5"], 3)
        if variant == "full":  # the other two targets of chapter 7, the probe on validation-split patients
            e = evaluate(run, ctx.phantom_dir, PROBES, seed=0, progress=False, model=em, probe_splits=["validate"])
            out[f"{tag}val_progression_acc"] = round(e["progression-probe"]["mean_acc"], 3)
            out[f"{tag}sentence_auc"] = round(e["temporal-text"]["auc"], 3)
    out["seconds"] = round(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="run folder name under WORK/runs")
    parser.add_argument("--variant", choices=("global", "full"), default="global")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--phantom-seed", type=int, default=2, help="seed of the phantom (default 2: not 0 or 1)")
    parser.add_argument("--work", default="benchmarks/results/plateau", help="phantom and runs (not tracked)")
    parser.add_argument("--window", type=int, default=200, help="steps per window of the global loss")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dry-run", action="store_true", help="print the configuration and folder; train nothing")
    parser.add_argument(
        "--record", default=None, help="also keep the summary in this JSON-lines file (a line per --name, replaced)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = plateau_run(
        args.name,
        variant=args.variant,
        steps=args.steps,
        overrides=tuple(args.overrides),
        profile=args.profile,
        phantom_seed=args.phantom_seed,
        work=args.work,
        window=args.window,
        dry_run=args.dry_run,
    )
    print(json.dumps(summary))
    if args.record and not args.dry_run:
        record(summary, args.record)


def record(summary: dict, path: str | Path) -> None:
    """Keep ``summary`` in the JSON-lines file ``path``: one line per run name, an earlier line of the name
    replaced, the others kept in their order. The run folder's path (of this machine) is left out."""
    summary = {k: v for k, v in summary.items() if k != "run"}
    path = Path(path)
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    lines = [x for x in lines if x["name"] != summary["name"]] + [summary]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


if __name__ == "__main__":
    main()

"""``medst evaluate``: every downstream task of Method §8 on one run, into one results JSON.

    medst evaluate --checkpoint RUN --data DIR --task all --out results.json

``DIR`` is a phantom root (``medst synth --out DIR``) or real data laid out the same way::

    DIR/mimic-cxr-jpg/   MIMIC-CXR-JPG (files/, metadata and split CSVs, mimic-cxr-reports/)
    DIR/ms-cxr-t/        MS-CXR-T image and sentence CSVs
    DIR/rsna/            stage_2_train_labels.csv, stage_2_train_images/*.dcm
    DIR/covidx/          train.txt, test.txt, train/, test/
    DIR/ground_truth/    boxes.csv (phantom only: lesion boxes for grounding)

The tasks (``--task`` takes one name, a comma-separated list, or ``all``), the files each needs and what
``all`` runs: the table :data:`medst.eval.tasks.TASKS`. A task whose files are absent (or that cannot run,
e.g. grounding for a model without the local branch) is skipped with a message naming the reason, recorded
under ``meta.skipped``.

Results: ``{task: {metric: value}, "meta": {checkpoint, data, profile, model, seconds, ...}}``; every number
is finite. ``random_baseline=True`` evaluates a randomly initialised model of the same architecture instead
of the run's weights: the baseline row of every table.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medst.eval import TaskSkipped
from medst.eval.embed import EvalModel, load_model
from medst.eval.tasks import TASKS, TaskOptions, missing_file, parse_tasks
from medst.utils import atomic_write


def finite_only(metrics: dict[str, Any], where: str) -> dict[str, Any]:
    """Drop non-finite numbers (with a message naming them) so the JSON holds finite numbers only."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, np.bool_)):
            out[key] = bool(value)
        elif isinstance(value, (int, np.integer)):
            out[key] = int(value)
        elif isinstance(value, (float, np.floating)):
            if math.isfinite(float(value)):
                out[key] = float(value)
            else:
                print(f"medst evaluate: {where}: {key} is {value}; left out of the results")
        else:
            out[key] = value
    return out


def evaluate(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    tasks: str | Sequence[str] = "all",
    *,
    device: str = "auto",
    random_baseline: bool = False,
    seed: int = 0,
    finetune_epochs: int | None = None,
    progress: bool = True,
    model: EvalModel | None = None,
    out: str | os.PathLike | None = None,
    probe_splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run downstream tasks on one model and return (and optionally write) the results.

    Args:
        checkpoint: run folder written by ``medst pretrain``.
        data: data root (see the module docstring).
        tasks: ``"all"``, a task name, a comma-separated string or a list.
        random_baseline: evaluate a randomly initialised model of the run's architecture instead.
        finetune_epochs: COVIDx fine-tuning epochs (None: chosen by profile).
        model: an already loaded :class:`EvalModel` (then ``checkpoint`` is only recorded).
        out: write the results JSON there.
        probe_splits: the phantom splits whose patients the progression probe uses (None: all), e.g.
            ``("test",)`` for held-out patients only.
    Returns:
        ``{task: {metric: value}, "meta": {...}}``.
    """
    start = time.perf_counter()
    names = parse_tasks(tasks)
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    em = model if model is not None else load_model(checkpoint, device, random_init=random_baseline, seed=seed)
    options = TaskOptions(
        seed=seed,
        progress=progress,
        finetune_epochs=finetune_epochs,
        probe_splits=list(probe_splits) if probe_splits else None,
    )
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    timing: dict[str, float] = {}
    for task in names:
        absent = missing_file(root, task)
        if absent is not None:
            skipped[task] = f"{absent} not found"
            print(f"medst evaluate: skipping {task}: {absent} not found")
            continue
        t0 = time.perf_counter()
        try:
            metrics = TASKS[task].run(em, root, options)
        except TaskSkipped as why:
            skipped[task] = str(why)
            print(f"medst evaluate: skipping {task}: {why}")
            continue
        timing[task] = round(time.perf_counter() - t0, 2)
        results[task] = finite_only(metrics, task)
        if progress:
            shown = ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in list(results[task].items())[:8]
            )
            print(f"medst evaluate: {task}: {shown}")
    results["meta"] = {
        "checkpoint": str(checkpoint),
        "data": str(root),
        "profile": em.profile,
        "probe_splits": options.probe_splits,
        "model": em.source,
        "device": str(em.device),
        "seed": seed,
        "tasks": names,
        "skipped": skipped,
        "task_seconds": timing,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if out is not None:
        write_results(results, out)
    return results


def write_results(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write results as JSON (refusing NaN/inf), atomically (temporary file, then rename)."""
    text = json.dumps(results, indent=2, allow_nan=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def evaluate_main(args) -> None:
    """``medst evaluate`` (args: checkpoint, data, task, out, device; optional random_baseline, seed,
    finetune_epochs, quiet)."""
    try:
        results = evaluate(
            args.checkpoint,
            args.data,
            args.task,
            device=args.device,
            random_baseline=bool(getattr(args, "random_baseline", False)),
            seed=int(getattr(args, "seed", 0) or 0),
            finetune_epochs=getattr(args, "finetune_epochs", None),
            probe_splits=(args.probe_split.split(",") if getattr(args, "probe_split", None) else None),
            progress=not getattr(args, "quiet", False),
            out=args.out,
        )
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    done = [t for t in results if t != "meta"]
    print(f"medst evaluate: wrote {args.out} ({', '.join(done) or 'no task'}; {results['meta']['seconds']:.1f} s)")
    if not done:
        raise SystemExit(
            "error: no task could run: " + "; ".join(f"{k}: {v}" for k, v in results["meta"]["skipped"].items())
        )

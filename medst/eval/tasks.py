"""The downstream tasks of Method §8, as one table: :data:`TASKS`, name -> :class:`Task`.

Each :class:`Task` says how to run it on a model and a data root, which files (relative to the data root) it
needs, whether ``--task all`` includes it, and what it measures. Everything else derives from the table:
:func:`parse_tasks` (``--task``), :func:`missing_file` (a task whose files are absent is skipped) and
:func:`task_help` (the ``--task`` help). The phantom probes (the ablations' two, and chapter 11's CT volume probe
and slice selection) need the phantom's ``ground_truth/`` and run only when named.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medst.data.studies import METADATA_NAME, SPLIT_NAME
from medst.eval import TaskSkipped, finetune, grounding_task, retrieval, sentence, temporal, volumes, zeroshot
from medst.eval.embed import EvalModel

__all__ = ["TASKS", "Task", "TaskOptions", "TaskSkipped", "missing_file", "parse_tasks", "task_help"]


@dataclass(frozen=True)
class TaskOptions:
    """Options every task may read: seeds of folds and fine-tuning, progress bars, COVIDx fine-tuning epochs
    (None: by profile) and the phantom splits whose patients the progression probe uses (None: all)."""

    seed: int = 0
    progress: bool = True
    finetune_epochs: int | None = None
    probe_splits: list[str] | None = None


@dataclass(frozen=True)
class Task:
    """One downstream task: ``run(model, data_root, options) -> {metric: value}`` (may raise
    :class:`TaskSkipped`), the ``files`` it needs under the data root (a ``.gz`` twin counts), whether ``all``
    runs it, and ``what`` it measures."""

    name: str
    run: Callable[[EvalModel, Path, TaskOptions], dict[str, float]]
    files: tuple[str, ...]
    in_all: bool
    what: str


_MIMIC = (f"mimic-cxr-jpg/{METADATA_NAME}", f"mimic-cxr-jpg/{SPLIT_NAME}")
_REPORTS = "mimic-cxr-jpg/mimic-cxr-reports"
_CT = ("mimic-cxr-jpg/ct/ct-metadata.csv", volumes.CT_SLICES)

# Task functions are looked up on their modules when a task runs (so a test may replace one).
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "temporal-image",
            lambda em, root, o: temporal.temporal_image_classification(em, root, seed=o.seed, progress=o.progress),
            (f"ms-cxr-t/{temporal.IMAGE_CSV}", _MIMIC[0]),
            True,
            "MS-CXR-T progression, linear SVM, 5/10-fold CV (medst.eval.temporal)",
        ),
        Task(
            "temporal-text",
            lambda em, root, o: sentence.temporal_sentence_similarity(em, root, seed=o.seed, progress=o.progress),
            (f"ms-cxr-t/{sentence.SENTENCE_CSV}",),
            True,
            "MS-CXR-T sentence similarity, AUC / accuracy (medst.eval.sentence)",
        ),
        Task(
            "rsna-zeroshot",
            lambda em, root, o: zeroshot.rsna_zero_shot(em, root, progress=o.progress),
            (f"rsna/{zeroshot.LABELS_CSV}", f"rsna/{zeroshot.IMAGES_DIR}"),
            True,
            "RSNA pneumonia with prompts, AUC / F1 / accuracy (medst.eval.zeroshot)",
        ),
        Task(
            "covidx",
            lambda em, root, o: finetune.covidx(em, root, epochs=o.finetune_epochs, seed=o.seed, progress=o.progress),
            ("covidx/train.txt", "covidx/test.txt"),
            True,
            "COVIDx probe and fine-tuning at 1/10/100 % labels (medst.eval.finetune)",
        ),
        Task(
            "retrieval",
            lambda em, root, o: retrieval.retrieval(em, root / "mimic-cxr-jpg", progress=o.progress),
            (*_MIMIC, _REPORTS),
            True,
            "image <-> report recall@1/5/10 on the test split (medst.eval.retrieval)",
        ),
        Task(
            "grounding",
            lambda em, root, o: grounding_task.grounding(em, root, seed=o.seed, progress=o.progress),
            (*_MIMIC, _REPORTS, "ground_truth/boxes.csv"),
            True,
            "pointing game of word -> patch attention (medst.eval.grounding_task)",
        ),
        Task(
            "progression-probe",
            lambda em, root, o: temporal.progression_probe(
                em, root, seed=o.seed, progress=o.progress, splits=o.probe_splits
            ),
            (_MIMIC[0], "ground_truth/progression.csv", "ground_truth/studies.csv"),
            False,
            "(phantom) the image task on all ground-truth pairs (medst.eval.temporal.progression_probe)",
        ),
        Task(
            "lateral-probe",
            lambda em, root, o: finetune.lateral_finding_probe(em, root, seed=o.seed, progress=o.progress),
            (_MIMIC[0], "ground_truth/studies.csv"),
            False,
            "(phantom) lateral-only findings, MoVE vs frontal (medst.eval.finetune.lateral_finding_probe)",
        ),
        Task(
            "volume-probe",
            lambda em, root, o: volumes.volume_finding_probe(em, root, seed=o.seed, progress=o.progress),
            _CT,
            False,
            "(phantom) CT findings, linear probe on volume embeddings, AUC (medst.eval.volumes)",
        ),
        Task(
            "slice-selection",
            lambda em, root, o: volumes.slice_selection(em, root, seed=o.seed, progress=o.progress),
            _CT,
            False,
            "(phantom) report-guided CT slab selection, precision@k vs chance (medst.eval.volumes)",
        ),
    )
}


def parse_tasks(spec: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"a,b"`` or a list -> task names, checked; ``all`` is every task with ``in_all``."""
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if names == ["all"]:
        return [t.name for t in TASKS.values() if t.in_all]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown or spec!r}; choose from {', '.join(TASKS)} or all")
    return names


def missing_file(data_root: str | os.PathLike, task: str) -> Path | None:
    """The first file ``task`` needs that ``data_root`` lacks (a ``.gz`` twin counts as present), or None."""
    root = Path(data_root)
    for rel in TASKS[task].files:
        path = root / rel
        if not (path.exists() or Path(f"{path}.gz").exists()):
            return path
    return None


def task_help() -> str:
    """The ``--task`` help: the task names, what ``all`` runs, and the phantom probes."""
    main = [t.name for t in TASKS.values() if t.in_all]
    probes = [t.name for t in TASKS.values() if not t.in_all]
    return (
        f"{', '.join(main)}, a comma-separated list, or all (= those); phantom probes, run when named: "
        f"{', '.join(probes)}"
    )

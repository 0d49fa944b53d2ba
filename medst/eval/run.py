"""``medst evaluate``: every downstream task of Method §8 on one run, into one results JSON.

    medst evaluate --checkpoint RUN --data DIR --task all --out results.json

``DIR`` is a phantom root (``medst synth --out DIR``) or real data laid out the same way::

    DIR/mimic-cxr-jpg/   MIMIC-CXR-JPG (files/, metadata and split CSVs, mimic-cxr-reports/)
    DIR/ms-cxr-t/        MS-CXR-T image and sentence CSVs
    DIR/rsna/            stage_2_train_labels.csv, stage_2_train_images/*.dcm
    DIR/covidx/          train.txt, test.txt, train/, test/
    DIR/ground_truth/    boxes.csv (phantom only: lesion boxes for grounding)

Tasks (``--task`` takes one name, a comma-separated list, or ``all``):

=================  ===================================================  =====================================
task               what                                                 module
=================  ===================================================  =====================================
temporal-image     MS-CXR-T progression, linear SVM, 5/10-fold CV        :mod:`medst.eval.temporal`
temporal-text      MS-CXR-T sentence similarity, AUC / accuracy         :mod:`medst.eval.sentence`
rsna-zeroshot      RSNA pneumonia with prompts, AUC / F1 / accuracy     :mod:`medst.eval.zeroshot`
covidx             COVIDx probe and fine-tuning at 1/10/100 % labels    :mod:`medst.eval.finetune`
retrieval          image <-> report recall@1/5/10 on the test split     :mod:`medst.eval.retrieval`
grounding          pointing game of word -> patch attention             :mod:`medst.eval.grounding`
progression-probe  (phantom) the image task on all ground-truth pairs   :func:`~medst.eval.temporal.progression_probe`
lateral-probe      (phantom) lateral-only findings, MoVE vs frontal     :func:`~medst.eval.finetune.lateral_finding_probe`
=================  ===================================================  =====================================

``all`` runs the first six; the two phantom probes (used by the ablations) run when named.

A task whose files are absent (or that cannot run, e.g. grounding for a model without the local branch) is
skipped with a message naming the reason, recorded under ``meta.skipped``.

Results: ``{task: {metric: value}, "meta": {checkpoint, data, profile, model, seconds, ...}}``; every number
is finite. ``random_baseline=True`` evaluates a randomly initialised model of the same architecture instead
of the run's weights: the baseline row of every table.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from medst.eval.embed import EvalModel, load_model
from medst.utils import atomic_write

TASKS = ("temporal-image", "temporal-text", "rsna-zeroshot", "covidx", "retrieval", "grounding")
# Phantom-only probes used by the ablations (they need ground_truth/); run by name, not part of "all".
PROBE_TASKS = ("progression-probe", "lateral-probe")


class TaskSkipped(Exception):
    """A task cannot run on this data or model; the message says why."""


# ---------------------------------------------------------------------------------------------------------
# Files each task needs
# ---------------------------------------------------------------------------------------------------------
def required_files(task: str) -> list[str]:
    """Paths (relative to the data root) a task needs; a ``*.gz`` alternative is accepted for MIMIC CSVs."""
    from medst.data.mimic import METADATA_NAME, SPLIT_NAME
    from medst.eval import sentence, temporal, zeroshot

    mimic = [f"mimic-cxr-jpg/{METADATA_NAME}", f"mimic-cxr-jpg/{SPLIT_NAME}"]
    return {
        "temporal-image": [f"ms-cxr-t/{temporal.IMAGE_CSV}", mimic[0]],
        "temporal-text": [f"ms-cxr-t/{sentence.SENTENCE_CSV}"],
        "rsna-zeroshot": [f"rsna/{zeroshot.LABELS_CSV}", f"rsna/{zeroshot.IMAGES_DIR}"],
        "covidx": ["covidx/train.txt", "covidx/test.txt"],
        "retrieval": mimic + ["mimic-cxr-jpg/mimic-cxr-reports"],
        "grounding": mimic + ["mimic-cxr-jpg/mimic-cxr-reports", "ground_truth/boxes.csv"],
        "progression-probe": mimic[:1] + ["ground_truth/progression.csv", "ground_truth/studies.csv"],
        "lateral-probe": mimic[:1] + ["ground_truth/studies.csv"],
    }[task]


def missing_file(data_root: Union[str, os.PathLike], task: str) -> Optional[Path]:
    """The first file ``task`` needs that ``data_root`` lacks, or None."""
    root = Path(data_root)
    for rel in required_files(task):
        path = root / rel
        if not (path.exists() or Path(f"{path}.gz").exists()):
            return path
    return None


def parse_tasks(spec: Union[str, Sequence[str]]) -> list[str]:
    """``"all"``, ``"a,b"`` or a list -> task names, checked."""
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if names == ["all"]:
        return list(TASKS)
    unknown = [t for t in names if t not in TASKS + PROBE_TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown or spec!r}; choose from {', '.join(TASKS + PROBE_TASKS)} "
                         "or all")
    return names


# ---------------------------------------------------------------------------------------------------------
# Grounding (the pointing game of medst.eval.grounding on the model's word -> patch attention)
# ---------------------------------------------------------------------------------------------------------
def _image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def grounding_items(em: EvalModel, studies, *, batch_size: int = 16, progress: bool = True) -> list:
    """Word -> patch attention of the local alignment (Method §5) for studies -> :class:`GroundingItem` list.

    Args:
        studies: DataFrame with frontal, lateral ("" if none), frontal_dicom, lateral_dicom, text
            (:func:`medst.eval.retrieval.read_mimic_studies`).
    """
    import torch
    from tqdm.auto import tqdm

    from medst.eval.embed import StudyImages, tokenize
    from medst.eval.grounding import GroundingItem, letterbox_affine

    model = em.model
    images = StudyImages(studies["frontal"].tolist(), em.image_size, studies["lateral"].tolist())
    items = []
    starts = range(0, len(studies), batch_size)
    for start in tqdm(starts, desc="grounding", disable=not progress, leave=False):
        rows = studies.iloc[start:start + batch_size]
        batch = [images[i] for i in range(start, start + len(rows))]
        front = torch.stack([b[0] for b in batch]).to(em.device)
        lat = torch.stack([b[1] for b in batch]).to(em.device)
        has_lat = torch.tensor([b[2] for b in batch], device=em.device)
        with torch.no_grad():
            img = model.encode_image(front, lat if bool(has_lat.any()) else None,
                                     has_lat if bool(has_lat.any()) else None, local=True)
            enc = tokenize(em, rows["text"].tolist())
            txt = model.encode_text(**enc, local=True)
            details = model.local_alignment(txt.words, img.patches, txt.word_mask, img.patch_mask,
                                            return_details=True)
        words = model.text.word_lists(enc["input_ids"].cpu())
        attention = details.word_to_patch.float().cpu()            # [B, W, P]
        for b, row in enumerate(rows.itertuples(index=False)):
            views = {"frontal": (row.frontal_dicom, letterbox_affine(*_image_size(row.frontal), resize=em.cache_side,
                                                                      crop=em.image_size))}
            if row.lateral:
                views["lateral"] = (row.lateral_dicom, letterbox_affine(*_image_size(row.lateral),
                                                                        resize=em.cache_side, crop=em.image_size))
            items.append(GroundingItem(attention=attention[b].numpy(), words=words[b], views=views))
    return items


def pointing_chance(items: Sequence[Any], boxes, *, grid: tuple[int, int], input_size: int) -> tuple[float, int]:
    """Expected pointing-game accuracy of a pointer that picks a patch uniformly at random.

    The trials are those of :func:`medst.eval.grounding.pointing_game` (a study, a view with boxes of a finding,
    the finding named in the report); a trial's chance is the share of the view's patch centres, mapped to
    original pixels, that fall inside one of the finding's boxes. Returns (mean chance, number of trials).
    """
    from medst.eval.grounding import finding_positions, load_boxes, patch_centers, split_views

    table = load_boxes(boxes)
    by_image = {key: g[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=np.float64)
                for key, g in table.groupby(["dicom_id", "finding"])}
    names = sorted(table["finding"].unique())
    centres = patch_centers(grid, input_size)
    chances = []
    for item in items:
        maps = split_views(item.attention, grid)
        for finding in names:
            if not finding_positions(item.words, finding):
                continue
            for view, (dicom_id, affine) in item.views.items():
                lesion = by_image.get((dicom_id, finding))
                if lesion is None or view not in maps:
                    continue
                x, y = affine.to_original(centres).T                              # [N] each
                inside = ((lesion[:, 0, None] <= x) & (x <= lesion[:, 2, None])
                          & (lesion[:, 1, None] <= y) & (y <= lesion[:, 3, None])).any(axis=0)
                chances.append(float(inside.mean()))
    return (float(np.mean(chances)) if chances else math.nan), len(chances)


def grounding(em: EvalModel, data_root: Union[str, os.PathLike], *, split: Union[str, Sequence[str], None] = "test",
              max_studies: Optional[int] = None, use_lateral: bool = True,
              seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Pointing game on the ``split`` studies that have lesion boxes (``ground_truth/boxes.csv``).

    ``split`` may be one split, several, or None (all: boxes are never used in training); ``max_studies``
    keeps a seeded random subset; ``use_lateral=False`` shows the model frontal views only (and scores them only).

    Returns ``accuracy``, ``hits``, ``total``, ``chance_accuracy`` (the expected accuracy of pointing at a
    uniformly random patch, :func:`pointing_chance`), and ``{finding}_accuracy`` / ``{view}_accuracy`` with their
    ``_total`` counts. Raises :class:`TaskSkipped` for a model without the local branch or when no trial exists.
    """
    from medst.eval.grounding import load_boxes, pointing_game
    from medst.eval.retrieval import read_mimic_studies

    if not em.model.uses_local:
        raise TaskSkipped("the model has no local alignment branch (loss.local_weight=0), so no word -> patch "
                          "attention to point with")
    root = Path(data_root)
    boxes = load_boxes(root / "ground_truth" / "boxes.csv")
    studies = read_mimic_studies(root / "mimic-cxr-jpg", split).table
    boxed = set(boxes["dicom_id"].astype(str))
    studies = studies[studies["frontal_dicom"].isin(boxed) | studies["lateral_dicom"].isin(boxed)]
    if not use_lateral:
        studies = studies.assign(lateral="", lateral_dicom="")
        studies = studies[studies["frontal_dicom"].isin(boxed)]
    if max_studies is not None and len(studies) > max_studies:
        studies = studies.sample(n=max_studies, random_state=seed).sort_index()
    if studies.empty:
        raise TaskSkipped(f"no {split} study of {root / 'mimic-cxr-jpg'} has a lesion box in "
                          f"{root / 'ground_truth' / 'boxes.csv'}")
    items = grounding_items(em, studies.reset_index(drop=True), progress=progress)
    ids = set(studies["frontal_dicom"]) | set(studies["lateral_dicom"])
    boxes = boxes[boxes["dicom_id"].astype(str).isin(ids)]          # only the images scored here
    kw = dict(grid=em.grid, input_size=em.image_size)
    game = pointing_game(items, boxes, **kw)
    if game["total"] == 0:
        raise TaskSkipped(f"no {split} study names a boxed finding in its report: no pointing-game trial")
    chance, trials = pointing_chance(items, boxes, **kw)
    if trials != game["total"]:  # the two must enumerate the same trials
        raise RuntimeError(f"pointing_chance counted {trials} trials, pointing_game {game['total']}")
    out: dict[str, float] = {"accuracy": game["accuracy"], "hits": game["hits"], "total": game["total"],
                             "chance_accuracy": chance, "studies": int(len(items))}
    for group in ("per_finding", "per_view"):
        for name, res in game[group].items():
            if res["total"]:
                out[f"{name}_accuracy"] = res["accuracy"]
                out[f"{name}_total"] = res["total"]
    return out


# ---------------------------------------------------------------------------------------------------------
# Running tasks
# ---------------------------------------------------------------------------------------------------------
def _task_function(task: str) -> Callable[..., dict[str, float]]:
    from medst.eval.finetune import covidx, lateral_finding_probe
    from medst.eval.retrieval import retrieval
    from medst.eval.sentence import temporal_sentence_similarity
    from medst.eval.temporal import progression_probe, temporal_image_classification
    from medst.eval.zeroshot import rsna_zero_shot

    return {
        "temporal-image": lambda em, root, o: temporal_image_classification(em, root, seed=o["seed"],
                                                                            progress=o["progress"]),
        "temporal-text": lambda em, root, o: temporal_sentence_similarity(em, root, seed=o["seed"],
                                                                          progress=o["progress"]),
        "rsna-zeroshot": lambda em, root, o: rsna_zero_shot(em, root, progress=o["progress"]),
        "covidx": lambda em, root, o: covidx(em, root, epochs=o["finetune_epochs"], seed=o["seed"],
                                             progress=o["progress"]),
        "retrieval": lambda em, root, o: retrieval(em, Path(root) / "mimic-cxr-jpg", progress=o["progress"]),
        "grounding": lambda em, root, o: grounding(em, root, seed=o["seed"], progress=o["progress"]),
        "progression-probe": lambda em, root, o: progression_probe(em, root, seed=o["seed"], progress=o["progress"],
                                                                   splits=o.get("probe_splits")),
        "lateral-probe": lambda em, root, o: lateral_finding_probe(em, root, seed=o["seed"], progress=o["progress"]),
    }[task]


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


def evaluate(checkpoint: Union[str, os.PathLike], data: Union[str, os.PathLike],
             tasks: Union[str, Sequence[str]] = "all", *, device: str = "auto", random_baseline: bool = False,
             seed: int = 0, finetune_epochs: Optional[int] = None, progress: bool = True,
             model: Optional[EvalModel] = None, out: Union[str, os.PathLike, None] = None,
             probe_splits: Optional[Sequence[str]] = None) -> dict[str, Any]:
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
    options = {"seed": seed, "progress": progress, "finetune_epochs": finetune_epochs,
               "probe_splits": list(probe_splits) if probe_splits else None}
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
            metrics = _task_function(task)(em, root, options)
        except TaskSkipped as why:
            skipped[task] = str(why)
            print(f"medst evaluate: skipping {task}: {why}")
            continue
        timing[task] = round(time.perf_counter() - t0, 2)
        results[task] = finite_only(metrics, task)
        if progress:
            shown = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in list(results[task].items())[:8])
            print(f"medst evaluate: {task}: {shown}")
    results["meta"] = {"checkpoint": str(checkpoint), "data": str(root), "profile": em.profile,
                       "probe_splits": options["probe_splits"],
                       "model": em.source, "device": str(em.device), "seed": seed, "tasks": names,
                       "skipped": skipped, "task_seconds": timing,
                       "seconds": round(time.perf_counter() - start, 2)}
    if out is not None:
        write_results(results, out)
    return results


def write_results(results: dict[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write results as JSON (refusing NaN/inf), atomically (temporary file, then rename)."""
    text = json.dumps(results, indent=2, allow_nan=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def evaluate_main(args) -> None:
    """``medst evaluate`` (args: checkpoint, data, task, out, device; optional random_baseline, seed,
    finetune_epochs, quiet)."""
    try:
        results = evaluate(args.checkpoint, args.data, args.task, device=args.device,
                           random_baseline=bool(getattr(args, "random_baseline", False)),
                           seed=int(getattr(args, "seed", 0) or 0),
                           finetune_epochs=getattr(args, "finetune_epochs", None),
                           probe_splits=(args.probe_split.split(",") if getattr(args, "probe_split", None)
                                         else None),
                           progress=not getattr(args, "quiet", False), out=args.out)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}")
    done = [t for t in results if t != "meta"]
    print(f"medst evaluate: wrote {args.out} ({', '.join(done) or 'no task'}; "
          f"{results['meta']['seconds']:.1f} s)")
    if not done:
        raise SystemExit("error: no task could run: " + "; ".join(f"{k}: {v}"
                                                                   for k, v in results["meta"]["skipped"].items()))


# ---------------------------------------------------------------------------------------------------------
# Ablations: which component buys what (chapter 9, benchmarks/ablations.py)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One row of the ablation: config overrides and whether the lateral view is used (MoVE)."""

    name: str
    overrides: tuple[str, ...] = ()
    lateral: bool = True
    note: str = ""


VARIANTS = (
    Variant("global", ("loss.local_weight=0", "loss.temporal_weight=0"), lateral=False,
            note="image-report InfoNCE only, frontal view only"),
    Variant("+local", ("loss.temporal_weight=0",), lateral=False, note="+ modality-weighted local alignment"),
    Variant("+local (published)", ("loss.temporal_weight=0", "loss.local_weighting=learned"), lateral=False,
            note="+local with the published learned word/patch weights (which collapse), not our remedy"),
    Variant("+MoVE", ("loss.temporal_weight=0",), lateral=True, note="+ lateral view through MoVE"),
    Variant("two views, shared FFN", ("loss.temporal_weight=0", "model.vision.experts=shared"), lateral=True,
            note="+MoVE without its experts: both views through one shared feed-forward"),
    Variant("+FMC", ("loss.rmr=false",), lateral=True, note="+ temporal: forward mapping classification only"),
    Variant("+RMR", ("loss.fmc=false",), lateral=True, note="+ temporal: reverse mapping regression only"),
    Variant("Med-ST", (), lateral=True, note="+ temporal: FMC and RMR (the full model)"),
)

# metric -> (what is measured, which component it judges)
ABLATION_METRICS = {
    "lateral_auc": ("lateral-only finding probe AUC", "MoVE"),
    "progression_acc": ("progression probe accuracy", "temporal objective"),
    "grounding_acc": ("pointing-game accuracy", "local alignment"),
    "retrieval_r@5": ("image->report recall@5", "global alignment"),
    "sentence_auc": ("temporal sentence AUC", "text tower"),
}
# metric -> its chance level: a number, or the column holding it
CHANCE_METRICS = {"lateral_auc": 0.5, "progression_acc": "progression_majority", "grounding_acc": "grounding_chance",
                  "retrieval_r@5": "retrieval_chance@5"}


def frontal_only(prepared_dir: Union[str, os.PathLike], out_dir: Union[str, os.PathLike]) -> Path:
    """A copy of a prepared folder whose studies have no lateral view (training "without MoVE").

    Tables are copied with the lateral columns emptied; the image cache is linked (or copied), not rewritten.
    """
    import pandas as pd

    src, out = Path(prepared_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    studies = pd.read_csv(src / "studies.csv", keep_default_na=False)
    studies["lateral"], studies["lateral_view"], studies["lateral_cache"] = "", "", -1
    studies.to_csv(out / "studies.csv", index=False)
    info = json.loads((src / "prepare.json").read_text())
    for name in ("sequences.csv", "summary.json", "skipped.csv"):
        if (src / name).exists():
            (out / name).write_bytes((src / name).read_bytes())
    (out / "prepare.json").write_text(json.dumps({**info, "lateral_removed": True}, indent=2))
    cache = info.get("cache_file")
    if cache and not (out / cache).exists():
        try:
            os.symlink((src / cache).resolve(), out / cache)
        except OSError:  # no symlinks (some file systems): copy
            import shutil

            shutil.copy2(src / cache, out / cache)
    return out


def variant_slug(variant: str) -> str:
    """A file-system-safe form of a variant name: ``+`` -> ``plus-``, every run of other characters than
    letters, digits, ``.``, ``_`` and ``-`` -> one ``_`` (``"two views, shared FFN"`` -> ``two_views_shared_FFN``,
    ``"+local (published)"`` -> ``plus-local_published``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", variant.replace("+", "plus-")).strip("_")
    if not slug or slug.strip(".") == "":
        raise ValueError(f"variant name {variant!r} has no letter or digit to name a folder after")
    return slug


def ablation_run_dir(out_dir: Union[str, os.PathLike], variant: str, seed: int) -> Path:
    """Where :func:`run_ablation` keeps the run of ``variant`` (a :data:`VARIANTS` name) and ``seed``:
    ``out_dir/runs/{variant_slug(variant)}-s{seed}`` (no spaces, parentheses or commas)."""
    return Path(out_dir) / "runs" / f"{variant_slug(variant)}-s{seed}"


def parse_variants(spec: Union[str, Sequence[str], None]) -> Optional[list[str]]:
    """``--variants`` -> :data:`VARIANTS` names (None for None or ``""``: all of them).

    ``spec`` is a comma-separated string or a list of such strings. A name that itself holds a comma
    (``"two views, shared FFN"``) is recognised whole: at each position the longest run of comma-separated
    pieces that forms a variant name is taken. Spaces around pieces do not matter, and each variant may also
    be given by its folder name (:func:`variant_slug`, e.g. ``two_views_shared_FFN``), which needs no quoting.
    Raises ``ValueError`` naming the choices for anything else.
    """
    if spec is None:
        return None
    items = [spec] if isinstance(spec, str) else list(spec)
    pieces = [p.strip() for item in items for p in str(item).split(",")]
    if not any(pieces):
        return None

    def norm(text: str) -> str:
        return re.sub(r"\s*,\s*", ",", " ".join(text.split()))

    known: dict[str, str] = {}
    for v in VARIANTS:
        known[norm(v.name)] = v.name
        known.setdefault(variant_slug(v.name), v.name)
    names, i = [], 0
    while i < len(pieces):
        if not pieces[i]:
            i += 1
            continue
        for j in range(len(pieces), i, -1):  # the longest match first
            name = known.get(norm(",".join(pieces[i:j])))
            if name is not None:
                break
        else:
            raise ValueError(f"unknown variant {pieces[i]!r} in {spec!r}; choose from "
                             + "; ".join(f"{v.name!r} (or {variant_slug(v.name)})" for v in VARIANTS))
        if name not in names:
            names.append(name)
        i = j
    return names


def ablation_metrics(em: EvalModel, data_root: Union[str, os.PathLike], *, lateral: bool = True, seed: int = 0,
                     max_pairs: Optional[int] = 2000, max_studies: Optional[int] = 300,
                     progress: bool = False) -> dict[str, float]:
    """Each component's target task on the phantom (labels never used in pre-training, so all splits):

    - MoVE: lateral-only findings probe AUC (with the lateral when ``lateral``, else frontal only);
    - temporal objective: progression probe accuracy (and its majority-class baseline);
    - local alignment: pointing-game accuracy on studies with lesion boxes (and its random-attention chance);
    - global alignment: image -> report recall@5 on the test split; text tower: temporal sentence AUC.
    """
    from medst.eval.finetune import lateral_finding_probe
    from medst.eval.retrieval import retrieval
    from medst.eval.sentence import temporal_sentence_similarity
    from medst.eval.temporal import progression_probe

    root = Path(data_root)
    out: dict[str, float] = {}
    lat = lateral_finding_probe(em, root, max_studies=max_studies, seed=seed, progress=progress)
    out["lateral_auc"] = lat["auc"] if lateral else lat["auc_frontal_only"]
    out["lateral_auc_frontal_only"] = lat["auc_frontal_only"]
    prog = progression_probe(em, root, max_pairs=max_pairs, seed=seed, progress=progress)
    if "mean_acc" in prog:
        out["progression_acc"], out["progression_majority"] = prog["mean_acc"], prog["mean_majority"]
    try:
        g = grounding(em, root, split=None, max_studies=max_studies, use_lateral=lateral, seed=seed,
                      progress=progress)
        out["grounding_acc"], out["grounding_chance"] = g["accuracy"], g["chance_accuracy"]
    except TaskSkipped:
        pass  # no local branch: nothing to point with
    ret = retrieval(em, root / "mimic-cxr-jpg", use_lateral=lateral, progress=progress)
    out["retrieval_r@5"], out["retrieval_chance@5"] = ret["i2t_r@5"], min(1.0, 5 * ret["chance_r@1"])
    out["sentence_auc"] = temporal_sentence_similarity(em, root, seed=seed, progress=progress)["auc"]
    return finite_only(out, "ablation")


VARIANT_ORDER = ("random init", *(v.name for v in VARIANTS))


def _in_variant_order(table: "pd.DataFrame") -> "pd.DataFrame":
    """Rows sorted by variant (random init first, then VARIANTS' order; only the variants present) and seed."""
    import pandas as pd

    present = set(table["variant"])
    table["variant"] = pd.Categorical(table["variant"], categories=[v for v in VARIANT_ORDER if v in present],
                                      ordered=True)
    return table.sort_values(["variant", "seed"]).reset_index(drop=True)


def run_ablation(profile: str, seeds: Sequence[int], out_dir: Union[str, os.PathLike], *,
                 data_dir: Union[str, os.PathLike, None] = None, variants: Optional[Sequence[str]] = None,
                 overrides: Sequence[str] = (), device: str = "auto", random_baseline: bool = True,
                 max_pairs: Optional[int] = 2000, max_studies: Optional[int] = 300, ctx=None,
                 progress: bool = True) -> "pd.DataFrame":
    """Pre-train every variant for every seed on the profile's phantom, evaluate, and tabulate.

    Runs go to ``out_dir/runs/{variant}-s{seed}`` (:func:`ablation_run_dir`); a run that already has
    ``model.safetensors`` is reused, and so are its metrics, kept in ``metrics.json`` in the run folder (the
    "random init" row in ``random_metrics.json`` of the last variant's run) together with the evaluation
    options they were computed with (``max_pairs``, ``max_studies``, the variant's ``lateral``, ``seed``): a
    change of those options evaluates again. So an interrupted ablation continues where it stopped, without
    repeating finished runs or evaluations. Returns one row per (variant, seed) with the metrics of
    :func:`ablation_metrics`; ``random_baseline`` adds a "random init" row per seed (the last variant's
    architecture, untrained). Tables and the chart: :func:`summarise_ablation`, :func:`plot_ablation`.
    ``variants``: names (or a comma-separated string) as :func:`parse_variants` reads them; None for all.

    The phantom and its prepared index come from ``ctx`` (a :class:`medst.chapter.Chapter`, e.g. a chapter's
    own) or else from ``medst.chapter.setup(profile, data_dir, 0, device, overrides)``; ``seeds`` are training
    seeds only, the data stay the same.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    import medst.chapter
    from medst.config import load_profile
    from medst.train.loop import pretrain

    out = Path(out_dir)
    if ctx is None:
        ctx = medst.chapter.setup(profile, data_dir if data_dir is not None else out / "_data", 0, device,
                                  list(overrides))
    phantom, prepared = ctx.phantom_dir, ctx.prepared_dir
    prepared_frontal = frontal_only(prepared, ctx.data_dir / f"prepared-{profile}-frontal")
    wanted = parse_variants(variants)
    chosen = [v for v in VARIANTS if wanted is None or v.name in wanted]
    rows = []
    jobs = [(v, s) for s in seeds for v in chosen]
    for variant, seed in tqdm(jobs, desc="ablation", disable=not progress):
        run = ablation_run_dir(out, variant.name, seed)
        if not (run / "model.safetensors").exists():
            for stale in (ABLATION_METRICS_FILE, RANDOM_METRICS_FILE):  # metrics of an earlier model
                (run / stale).unlink(missing_ok=True)
            cfg = load_profile(profile, [*overrides, *variant.overrides, f"train.seed={seed}"])
            pretrain(cfg, prepared if variant.lateral else prepared_frontal, run, device=str(ctx.device),
                     progress=False)
        options = {"lateral": bool(variant.lateral), "seed": int(seed), "max_pairs": max_pairs,
                   "max_studies": max_studies}
        metrics = _cached_metrics(run / ABLATION_METRICS_FILE, {"variant": variant.name, **options},
                                  lambda: ablation_metrics(load_model(run, ctx.device), phantom, **options))
        rows.append({"variant": variant.name, "seed": seed, **metrics})
        if random_baseline and variant is chosen[-1]:
            metrics = _cached_metrics(
                run / RANDOM_METRICS_FILE, {"variant": "random init", "architecture": variant.name, **options},
                lambda: ablation_metrics(load_model(run, ctx.device, random_init=True, seed=seed), phantom,
                                         **options))
            rows.append({"variant": "random init", "seed": seed, **metrics})
    return _in_variant_order(pd.DataFrame(rows))


ABLATION_METRICS_FILE = "metrics.json"         # in a run folder: its ablation_metrics and their options
RANDOM_METRICS_FILE = "random_metrics.json"    # the random-init row, in the last variant's run folder


def _cached_metrics(path: Path, key: dict[str, Any], compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``compute()``, or the metrics ``path`` holds if they were computed for the same ``key`` (the evaluation
    options); fresh results are written to ``path`` atomically (:func:`write_results`) as ``{key, metrics}``."""
    key = json.loads(json.dumps(key))  # as it reads back from JSON
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("metrics"), dict):
            return cached["metrics"]
    except (OSError, ValueError):
        pass  # absent or unreadable (e.g. cut short): evaluate again
    metrics = compute()
    write_results({"key": key, "metrics": metrics}, path)
    return metrics


# component -> (variant with it, variant without it, the metric that judges it)
COMPARISONS = (
    ("local alignment", "+local", "global", "grounding_acc"),      # judged against chance (see below)
    ("local remedy", "+local", "+local (published)", "grounding_acc"),
    ("MoVE", "+MoVE", "+local", "lateral_auc"),
    ("MoVE experts", "+MoVE", "two views, shared FFN", "lateral_auc"),
    ("FMC", "+FMC", "+MoVE", "progression_acc"),
    ("RMR", "+RMR", "+MoVE", "progression_acc"),
    ("FMC + RMR", "Med-ST", "+MoVE", "progression_acc"),
)


def ablation_verdicts(table: "pd.DataFrame", noise_floor: float = 0.02) -> "pd.DataFrame":
    """For each component, its variant against the variant without it, on the component's target metric.

    ``difference`` = mean(with) - mean(without) over seeds; ``se`` its standard error (None with one seed).
    Verdict: "helped" / "hurt" when |difference| > 2·se (with several seeds) or > ``noise_floor`` (one seed),
    else "no clear difference". The local alignment has no "without" (a model without the local branch
    cannot point), so the component "local alignment" is judged against the pointing game's chance level
    instead; other grounding comparisons (the "local remedy": our token weights against the published learned
    ones) compare two variants like every other component. "MoVE experts" sets MoVE against the same two views
    through one shared feed-forward.
    """
    import pandas as pd

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
        se = (float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
              if len(a) > 1 and len(b) > 1 else None)
        margin = 2 * se if se is not None else noise_floor
        verdict = "helped" if diff > margin else "hurt" if diff < -margin else "no clear difference"
        if se is None:
            verdict += " (one seed: no error bar)"
        rows.append({"component": component, "metric": metric, "with": with_, "against": reference,
                     "mean_with": float(a.mean()), "mean_against": float(b.mean()), "difference": diff, "se": se,
                     "seeds": int(min(len(a), len(b))), "verdict": verdict})
    return pd.DataFrame(rows)


def summarise_ablation(table: "pd.DataFrame") -> "pd.DataFrame":
    """Per variant: mean and standard deviation over seeds of every metric (columns ``metric_mean``/``_std``)."""
    numeric = [c for c in table.columns if c not in ("variant", "seed")]
    grouped = table.groupby("variant", observed=True)[numeric]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    summary = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    summary.insert(0, "seeds", table.groupby("variant", observed=True)["seed"].nunique())
    return summary[["seeds"] + [f"{c}_{s}" for c in numeric for s in ("mean", "std")]]


def ablation_markdown(summary: "pd.DataFrame", metrics: Sequence[str] = tuple(ABLATION_METRICS)) -> str:
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


def plot_ablation(summary: "pd.DataFrame", metrics: Sequence[str] = tuple(ABLATION_METRICS), chance=None):
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


def write_ablation(table: "pd.DataFrame", out_dir: Union[str, os.PathLike]) -> dict[str, Path]:
    """Write ``ablation_runs.csv`` (one row per run), ``ablation.csv``/``.json``/``.md`` (mean ± std) and
    ``ablation.png`` (bar chart) under ``out_dir``; returns their paths."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise_ablation(table)
    paths = {"runs": out / "ablation_runs.csv", "csv": out / "ablation.csv", "json": out / "ablation.json",
             "markdown": out / "ablation.md", "chart": out / "ablation.png"}
    table.to_csv(paths["runs"], index=False)
    summary.to_csv(paths["csv"])
    records = {str(k): {c: (None if not math.isfinite(v) else float(v)) for c, v in row.items()}
               for k, row in summary.iterrows()}
    paths["json"].write_text(json.dumps(records, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(ablation_markdown(summary) + "\n")
    fig = plot_ablation(summary)
    fig.savefig(paths["chart"], dpi=120, bbox_inches="tight")
    plt.close(fig)  # written, not shown
    return paths


def read_ablation(source: Union[str, os.PathLike]) -> "pd.DataFrame":
    """Read an ``ablation_runs.csv`` written by :func:`write_ablation` (a path or a URL) back into the table
    :func:`run_ablation` returns, variants in their usual order; raises ``ValueError`` if it is not one."""
    import pandas as pd

    table = pd.read_csv(source)
    missing = {"variant", "seed"} - set(table.columns)
    if missing:
        raise ValueError(f"{source} is not an ablation table: no column(s) {sorted(missing)}")
    unknown = set(table["variant"]) - set(VARIANT_ORDER)
    if unknown:
        raise ValueError(f"{source}: unknown variant(s) {sorted(unknown)}")
    return _in_variant_order(table)

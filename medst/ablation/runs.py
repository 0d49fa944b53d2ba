"""Ablations of Med-ST: which component buys what (chapter 9, ``benchmarks/ablations.py``).

Every :data:`VARIANTS` entry switches components of Method §3-§6 on or off through config overrides (and
trains on frontal views only where MoVE is off); :func:`run_ablation` pre-trains each variant for each seed
on the profile's phantom (:func:`medst.train.loop.pretrain`) and scores it on each component's target task
(:func:`ablation_metrics`, tasks of :mod:`medst.eval`). The tables, chart and verdicts:
:mod:`medst.ablation.report`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

import medst.book.chapter
from medst.config import Config, load_profile
from medst.data.ct import CT_TABLE
from medst.eval import TaskSkipped
from medst.eval.embed import EvalModel, load_model
from medst.eval.finetune import lateral_finding_probe
from medst.eval.grounding_task import grounding
from medst.eval.retrieval import retrieval
from medst.eval.run import finite_only, write_results
from medst.eval.sentence import temporal_sentence_similarity
from medst.eval.temporal import progression_probe
from medst.train.checkpoint import run_differences
from medst.train.loop import pretrain


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: config overrides and whether the lateral view is used (MoVE)."""

    name: str
    overrides: tuple[str, ...] = ()
    lateral: bool = True
    note: str = ""


VARIANTS = (
    Variant(
        "global",
        ("loss.local_weight=0", "loss.temporal_weight=0"),
        lateral=False,
        note="image-report InfoNCE only, frontal view only",
    ),
    Variant("+local", ("loss.temporal_weight=0",), lateral=False, note="+ modality-weighted local alignment"),
    Variant(
        "+local (published)",
        ("loss.temporal_weight=0", "loss.local_weighting=learned"),
        lateral=False,
        note="+local with the published learned word/patch weights (which collapse), not our remedy",
    ),
    Variant("+MoVE", ("loss.temporal_weight=0",), lateral=True, note="+ lateral view through MoVE"),
    Variant(
        "two views, shared FFN",
        ("loss.temporal_weight=0", "model.vision.experts=shared"),
        lateral=True,
        note="+MoVE without its experts: both views through one shared feed-forward",
    ),
    Variant("+FMC", ("loss.rmr=false",), lateral=True, note="+ temporal: forward mapping classification only"),
    Variant("+RMR", ("loss.fmc=false",), lateral=True, note="+ temporal: reverse mapping regression only"),
    Variant("Med-ST", (), lateral=True, note="+ temporal: FMC and RMR (the full model)"),
    Variant(
        "Med-ST, temporal from step 0",
        ("loss.temporal_start=0", "loss.temporal_ramp=0"),
        lateral=True,
        note="the full model with the temporal term from the first step (as published), not once the global "
        "alignment has formed",
    ),
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
CHANCE_METRICS = {
    "lateral_auc": 0.5,
    "progression_acc": "progression_majority",
    "grounding_acc": "grounding_chance",
    "retrieval_r@5": "retrieval_chance@5",
}
ABLATION_METRICS_FILE = "metrics.json"  # in a run folder: its ablation_metrics and their options
RANDOM_METRICS_FILE = "random_metrics.json"  # the random-init row, in the last variant's run folder


def frontal_only(prepared_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """A copy of a prepared folder whose studies have no lateral view (training "without MoVE").

    Tables are copied with the lateral columns emptied (the CT index, if any, as it is); the image cache is linked
    (or copied), not rewritten.
    """
    src, out = Path(prepared_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    studies = pd.read_csv(src / "studies.csv", keep_default_na=False)
    studies["lateral"], studies["lateral_view"], studies["lateral_cache"] = "", "", -1
    studies.to_csv(out / "studies.csv", index=False)
    info = json.loads((src / "prepare.json").read_text())
    for name in ("sequences.csv", "summary.json", "skipped.csv", CT_TABLE):
        if (src / name).exists():
            (out / name).write_bytes((src / name).read_bytes())
    (out / "prepare.json").write_text(json.dumps({**info, "lateral_removed": True}, indent=2))
    cache = info.get("cache_file")
    if cache and not (out / cache).exists():
        try:
            os.symlink((src / cache).resolve(), out / cache)
        except OSError:  # no symlinks (some file systems): copy
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


def ablation_run_dir(out_dir: str | os.PathLike, variant: str, seed: int) -> Path:
    """Where :func:`run_ablation` keeps the run of ``variant`` (a :data:`VARIANTS` name) and ``seed``:
    ``out_dir/runs/{variant_slug(variant)}-s{seed}`` (no spaces, parentheses or commas)."""
    return Path(out_dir) / "runs" / f"{variant_slug(variant)}-s{seed}"


def parse_variants(spec: str | Sequence[str] | None) -> list[str] | None:
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
            raise ValueError(
                f"unknown variant {pieces[i]!r} in {spec!r}; choose from "
                + "; ".join(f"{v.name!r} (or {variant_slug(v.name)})" for v in VARIANTS)
            )
        if name not in names:
            names.append(name)
        i = j
    return names


def ablation_metrics(
    em: EvalModel,
    data_root: str | os.PathLike,
    *,
    lateral: bool = True,
    seed: int = 0,
    max_pairs: int | None = 2000,
    max_studies: int | None = 300,
    progress: bool = False,
) -> dict[str, float]:
    """Each component's target task on the phantom (labels never used in pre-training, so all splits):

    - MoVE: lateral-only findings probe AUC (with the lateral when ``lateral``, else frontal only);
    - temporal objective: progression probe accuracy (and its majority-class baseline);
    - local alignment: pointing-game accuracy on studies with lesion boxes (and its random-attention chance);
    - global alignment: image -> report recall@5 on the test split; text tower: temporal sentence AUC.
    """
    root = Path(data_root)
    out: dict[str, float] = {}
    lat = lateral_finding_probe(em, root, max_studies=max_studies, seed=seed, progress=progress)
    out["lateral_auc"] = lat["auc"] if lateral else lat["auc_frontal_only"]
    out["lateral_auc_frontal_only"] = lat["auc_frontal_only"]
    prog = progression_probe(em, root, max_pairs=max_pairs, seed=seed, progress=progress)
    if "mean_acc" in prog:
        out["progression_acc"], out["progression_majority"] = prog["mean_acc"], prog["mean_majority"]
    try:
        g = grounding(em, root, split=None, max_studies=max_studies, use_lateral=lateral, seed=seed, progress=progress)
        out["grounding_acc"], out["grounding_chance"] = g["accuracy"], g["chance_accuracy"]
    except TaskSkipped:
        pass  # no local branch: nothing to point with
    ret = retrieval(em, root / "mimic-cxr-jpg", use_lateral=lateral, progress=progress)
    out["retrieval_r@5"], out["retrieval_chance@5"] = ret["i2t_r@5"], min(1.0, 5 * ret["chance_r@1"])
    out["sentence_auc"] = temporal_sentence_similarity(em, root, seed=seed, progress=progress)["auc"]
    return finite_only(out, "ablation")


VARIANT_ORDER = ("random init", *(v.name for v in VARIANTS))


def in_variant_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by variant (random init first, then VARIANTS' order; only the variants present) and seed."""
    present = set(table["variant"])
    table["variant"] = pd.Categorical(
        table["variant"], categories=[v for v in VARIANT_ORDER if v in present], ordered=True
    )
    return table.sort_values(["variant", "seed"]).reset_index(drop=True)


def run_ablation(
    profile: str,
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    variants: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    random_baseline: bool = True,
    max_pairs: int | None = 2000,
    max_studies: int | None = 300,
    ctx=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Pre-train every variant for every seed on the profile's phantom, evaluate, and tabulate.

    Runs go to ``out_dir/runs/{variant}-s{seed}`` (:func:`ablation_run_dir`); a run that already has
    ``model.safetensors`` is reused, and so are its metrics, kept in ``metrics.json`` in the run folder (the
    "random init" row in ``random_metrics.json`` of the last variant's run) together with the evaluation
    options they were computed with (``max_pairs``, ``max_studies``, the variant's ``lateral``, ``seed``): a
    change of those options evaluates again. So an interrupted ablation continues where it stopped, without
    repeating finished runs or evaluations. Returns one row per (variant, seed) with the metrics of
    :func:`ablation_metrics`; ``random_baseline`` adds a "random init" row per seed (the last variant's
    architecture, untrained). Tables and the chart: :func:`medst.ablation.report.summarise_ablation`,
    :func:`medst.ablation.report.plot_ablation`.
    ``variants``: names (or a comma-separated string) as :func:`parse_variants` reads them; None for all.

    The phantom and its prepared index come from ``ctx`` (a :class:`medst.book.chapter.Chapter`, e.g. a chapter's
    own) or else from ``medst.book.chapter.setup(profile, data_dir, 0, device, overrides)``; ``seeds`` are training
    seeds only, the data stay the same.
    """
    out = Path(out_dir)
    if ctx is None:
        ctx = medst.book.chapter.setup(
            profile, data_dir if data_dir is not None else out / "_data", 0, device, list(overrides)
        )
    phantom, prepared = ctx.phantom_dir, ctx.prepared_dir
    prepared_frontal = frontal_only(prepared, ctx.data_dir / f"prepared-{profile}-frontal")
    wanted = parse_variants(variants)
    chosen = [v for v in VARIANTS if wanted is None or v.name in wanted]
    rows = []
    jobs = [(v, s) for s in seeds for v in chosen]
    for variant, seed in tqdm(jobs, desc="ablation", disable=not progress):
        run = ablation_run_dir(out, variant.name, seed)
        cfg = load_profile(profile, [*overrides, *variant.overrides, f"train.seed={seed}"])
        if not reusable_run(run, cfg):
            for stale in (ABLATION_METRICS_FILE, RANDOM_METRICS_FILE):  # metrics of an earlier model
                (run / stale).unlink(missing_ok=True)
            pretrain(
                cfg, prepared if variant.lateral else prepared_frontal, run, device=str(ctx.device), progress=False
            )
        options = {
            "lateral": bool(variant.lateral),
            "seed": int(seed),
            "max_pairs": max_pairs,
            "max_studies": max_studies,
        }
        metrics = _cached_metrics(
            run / ABLATION_METRICS_FILE,
            {"variant": variant.name, **options},
            lambda: ablation_metrics(load_model(run, ctx.device), phantom, **options),
        )
        rows.append({"variant": variant.name, "seed": seed, **metrics})
        if random_baseline and variant is chosen[-1]:
            metrics = _cached_metrics(
                run / RANDOM_METRICS_FILE,
                {"variant": "random init", "architecture": variant.name, **options},
                lambda: ablation_metrics(load_model(run, ctx.device, random_init=True, seed=seed), phantom, **options),
            )
            rows.append({"variant": "random init", "seed": seed, **metrics})
    return in_variant_order(pd.DataFrame(rows))


def reusable_run(run: Path, cfg: Config) -> bool:
    """Whether ``run`` holds a finished run of ``cfg`` (:func:`medst.train.checkpoint.run_differences`); a
    finished run of another configuration (e.g. trained before the profile changed) is named, with its
    differences, and its folder cleared for a new run."""
    if not (run / "model.safetensors").exists():
        return False
    diff = run_differences(run, cfg.to_dict())
    if diff:
        print(f"{run}: trained with another configuration, training again:\n  " + "\n  ".join(diff), flush=True)
        shutil.rmtree(run)
    return not diff


def _cached_metrics(path: Path, key: dict[str, Any], compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``compute()``, or the metrics ``path`` holds if they were computed for the same ``key`` (the evaluation
    options); fresh results are written to ``path`` atomically (:func:`medst.eval.run.write_results`) as
    ``{key, metrics}``."""
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

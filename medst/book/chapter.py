"""What every chapter does first: read its parameters, find or make its data, pick a device.

A chapter's ``parameters`` cell sets ``profile``, ``data_dir``, ``seed`` and ``device``; its next cell calls
:func:`setup`. Everything a chapter produces lives under ``data_dir`` (the phantom, the prepared index, the
tokenizer, runs), so chapters share nothing but files::

    from medst.book import setup

    ctx = setup(profile, data_dir, seed, device)
    loader = ctx.loader("train")

The phantom and the prepared index are made on first use and reused afterwards (a stamp file records the
arguments they were made with; other arguments make them again).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medst.config import Config, load_profile
from medst.data.dataset import loader_from_config
from medst.data.mimic import prepare
from medst.models.build import build_tokenizer
from medst.phantom import synthesize
from medst.train.checkpoint import finished_run
from medst.train.loop import Trainer
from medst.train.shipped import install, shipped_model
from medst.utils import resolve_device, seed_everything  # noqa: F401  (re-exported for the chapters)

STAMP = ".medst-complete.json"


def in_colab() -> bool:
    """True when running inside Google Colab (the chapters' install cell runs only there)."""
    return "google.colab" in sys.modules


def _stamped(folder: Path, args: dict[str, Any]) -> bool:
    stamp = folder / STAMP
    return stamp.exists() and json.loads(stamp.read_text()) == args


def _stamp(folder: Path, args: dict[str, Any]) -> None:
    (folder / STAMP).write_text(json.dumps(args, sort_keys=True))


def _clear_run(run: Path) -> None:
    """Remove what a previous, different run left in ``run`` (weights, metrics, checkpoints)."""
    for stale in ("model.safetensors", "metrics.csv", "checkpoints", "tensorboard", "MANIFEST.json"):
        path = run / stale
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


@dataclass
class Chapter:
    """A chapter's context: its profile's configuration, folders and device."""

    profile: str
    cfg: Config
    data_dir: Path
    seed: int
    device: torch.device
    _tokenizer: Any = field(default=None, repr=False)

    # -- data ---------------------------------------------------------------------------------------
    @property
    def phantom_dir(self) -> Path:
        """The phantom of this profile (``medst synth``), generated on first use."""
        folder = self.data_dir / f"phantom-{self.profile}{self._ct_suffix}"
        args = {"patients": self.cfg.data.patients, "image_size": self.cfg.data.phantom_size, "seed": self.seed}
        ct = float(self.cfg.data.ct_fraction)
        if ct > 0:
            args["ct_fraction"] = ct
        if not _stamped(folder, args):
            shutil.rmtree(folder, ignore_errors=True)
            synthesize(
                folder, n_patients=args["patients"], image_size=args["image_size"], seed=self.seed, ct_fraction=ct
            )
            _stamp(folder, args)
        return folder

    @property
    def _ct_suffix(self) -> str:
        """ "" without CT volumes; "-ct50" for ``data.ct_fraction`` 0.5 (a phantom with CT lives in its own folder,
        so chapters with and without CT do not remake each other's data)."""
        ct = float(self.cfg.data.ct_fraction)
        return f"-ct{round(100 * ct)}" if ct > 0 else ""

    @property
    def mimic_root(self) -> Path:
        """The phantom's MIMIC-CXR-JPG tree; point this at a real MIMIC-CXR-JPG root to use real data."""
        return self.phantom_dir / "mimic-cxr-jpg"

    @property
    def prepared_dir(self) -> Path:
        """The pre-training index (``medst prepare``) with its resized image cache, made on first use."""
        root = self.mimic_root
        folder = self.data_dir / f"prepared-{self.profile}{self._ct_suffix}"
        args = {
            "mimic_root": str(root.resolve()),
            "cache_size": self.cfg.data.cache_size,
            "sequence_length": self.cfg.data.sequence_length,
        }
        if not _stamped(folder, args):
            shutil.rmtree(folder, ignore_errors=True)
            prepare(root, folder, cache_size=args["cache_size"], sequence_length=args["sequence_length"])
            _stamp(folder, args)
        return folder

    def run_dir(self, name: str) -> Path:
        """A folder for a run's outputs under ``data_dir/runs``."""
        path = self.data_dir / "runs" / f"{name}-{self.profile}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def variant_run(
        self,
        name: str,
        overrides: list[str] | tuple[str, ...] = (),
        max_steps: int | None = None,
        progress: bool = True,
    ) -> Path:
        """A run of the profile's configuration with ``overrides`` (and ``train.steps`` capped at ``max_steps``),
        in ``data_dir/runs/{name}-{profile}``: trained on first use, loaded afterwards.

        A folder that holds finished weights trained with exactly this configuration (its ``config.json``) is
        used as it is; otherwise (none yet, or a run of another configuration) the run is trained here from
        scratch, with a progress bar. Chapters use it for the book model and for the short comparison runs
        they look inside (e.g. chapter 5's published weighting). Returns the run folder.
        """
        cfg = self.cfg.override(*overrides)
        if max_steps is not None and max_steps < cfg.train.steps:
            cfg = cfg.override(f"train.steps={max_steps}", f"train.checkpoint_every={max(1, max_steps // 10)}")
        run = self.run_dir(name)
        if not finished_run(run, cfg.to_dict()):
            _clear_run(run)
            Trainer.from_config(
                cfg,
                self.prepared_dir,
                run,
                device=str(self.device),
                tokenizer=self.build_tokenizer(),
                progress=progress,
            ).fit()
        return run

    def book_model(self, progress: bool = True, retrain: bool = False) -> Path:
        """The book model: the profile's full Med-ST run in ``data_dir/runs/book-{profile}``.

        Chapter 7 introduces it; chapters 5, 6, 8 and 9 load it. When the run folder does not hold it yet, the
        model committed with the repository for this profile (:mod:`medst.train.shipped`) is copied in after its
        sha256 checks, provided it was trained with exactly this configuration on the same reports (the same
        tokenizer); otherwise, or with ``retrain=True``, it is trained here (:meth:`variant_run`).
        """
        run = self.run_dir("book")
        if retrain:
            _clear_run(run)
        elif not finished_run(run, self.cfg.to_dict()):
            shipped = shipped_model(self.profile)
            if shipped is not None and finished_run(shipped, self.cfg.to_dict()):
                if self._same_tokenizer(shipped / "tokenizer"):
                    _clear_run(run)
                    install(shipped, run)
                    print(
                        f"book model: the committed run {shipped.name} (sha256 checked), "
                        "not trained here; book_model(retrain=True) trains it"
                    )
                else:
                    print(
                        f"book model: {shipped} was trained on other reports (its tokenizer differs); training it here"
                    )
        return self.variant_run("book", progress=progress)

    def _same_tokenizer(self, folder: Path) -> bool:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder)).get_vocab() == self.build_tokenizer().get_vocab()

    # -- text and loaders ---------------------------------------------------------------------------
    def build_tokenizer(self):
        """The profile's tokenizer (trained on the training reports for the ``tiny`` text tower)."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.cfg, self.prepared_dir)
        return self._tokenizer

    def loader(self, split: str = "train", *, train: bool | None = None, **overrides):
        """A DataLoader of typed batches (S sequences of L studies, then singles) for ``split``: the profile's
        (:func:`~medst.data.dataset.loader_from_config`) with this chapter's seed; ``overrides`` as there."""
        kwargs = dict(seed=self.seed, pin_memory=self.device.type == "cuda")
        kwargs.update(overrides)
        return loader_from_config(
            self.cfg, self.prepared_dir, self.build_tokenizer(), split=split, train=train, **kwargs
        )


def setup(
    profile: str = "cpu",
    data_dir: str | os.PathLike = "_data",
    seed: int = 0,
    device: str = "auto",
    overrides: list[str] | tuple[str, ...] = (),
) -> Chapter:
    """Resolve a chapter's parameters into a :class:`Chapter` (config, folders, device) and seed everything."""
    cfg = load_profile(profile, list(overrides))
    cfg.train.seed = seed
    folder = Path(data_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    if profile == "ci":
        # The ci models are tiny: one thread avoids thread hand-offs that cost more than the work itself
        # and keeps chapter times steady on a shared 2-core machine.
        torch.set_num_threads(1)
    # Without ipywidgets, tqdm.auto falls back to text bars: fine in a notebook, no need for a warning.
    warnings.filterwarnings("ignore", message="IProgress not found")
    dev = resolve_device(device)
    print(f"medst chapter: profile={profile} data_dir={folder} seed={seed} device={dev}")
    return Chapter(profile=profile, cfg=cfg, data_dir=folder, seed=seed, device=dev)

"""Med-ST batches (Method §1) from a prepared index (``medst prepare``): S sequences of L studies, then singles.

Pieces, each usable on its own:

- :class:`StudyDataset`: one item per usable study of a split (frontal, optional lateral, report text), its
  images cropped by an :class:`~medst.data.transforms.ImageTransform` (:mod:`medst.data.transforms`).
- :class:`~medst.data.sampler.SequenceBatchSampler` (:mod:`medst.data.sampler`): which studies form a batch
  (whole time-ordered sequences first, DDP-aware).
- :class:`Collator`: items -> a typed :class:`Batch` (normalised images, tokenised text, compact lateral views,
  S and L).
- :func:`make_loader`: the three above in a ``torch.utils.data.DataLoader``; :func:`loader_from_config` (and
  :func:`collator_from_config`): the same from a profile's :class:`~medst.config.Config`, as pre-training,
  ``medst bench`` and the chapters build them.

How the collator knows S: the sampler yields :class:`~medst.data.sampler.SequenceIndex` values (plain ``int``
subclasses that also carry their position in a sequence), the dataset copies that position into the item, and
the collator counts the leading run of sequence items. A plain integer index is a single study.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from medst.config import Config
from medst.data.images import read_image, resize_pad
from medst.data.mimic import sliding_windows
from medst.data.sampler import SequenceBatchSampler
from medst.data.transforms import ImageTransform, normalise


# ---------------------------------------------------------------------------------------------------------
# Batch
# ---------------------------------------------------------------------------------------------------------
class TensorFields:
    """``to(device)`` and ``pin_memory()`` for a dataclass of tensors: applied to every ``Tensor`` field, the other
    fields (ids, texts, counts) kept as they are. Shared by :class:`Batch` and the CT batches of chapter 11."""

    def _map(self, fn):
        tensors = {f.name: fn(v) for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}
        return dataclasses.replace(self, **tensors)

    def to(self, device: torch.device | str, non_blocking: bool = False):
        """The batch with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        """The batch in page-locked memory (called by ``DataLoader(pin_memory=True)``)."""
        return self._map(lambda t: t.pin_memory())


@dataclass
class Batch(TensorFields):
    """One Med-ST batch. The first ``num_sequences * sequence_length`` studies are S whole sequences, each L
    consecutive studies of one patient in time order; the remaining studies are singles."""

    frontal: Tensor  # [B, 3, H, W] float
    lateral: Tensor  # [B_lat, 3, H, W] float: only the studies that have a lateral, in batch order
    # (then zero rows after :meth:`pad_laterals`)
    has_lateral: Tensor  # [B] bool
    input_ids: Tensor  # [B, T] long
    attention_mask: Tensor  # [B, T] long
    num_sequences: int  # S
    sequence_length: int  # L
    study_ids: list[int]
    subject_ids: list[int]
    texts: list[str]

    @property
    def size(self) -> int:
        """B, the number of studies."""
        return int(self.frontal.shape[0])

    def pad_laterals(self, bucket: int) -> Batch:
        """The batch with zero rows appended to ``lateral`` up to a multiple of ``bucket`` (at most B rows), so
        that the lateral group of MoVE takes few sizes (``MoVE.group_bucket``, static shapes for
        ``torch.compile``). ``has_lateral`` still marks the real ones. ``bucket`` 0 returns the batch as is."""
        rows = self.lateral.shape[0]
        target = min(-(-rows // bucket) * bucket, self.size) if bucket > 0 else rows
        if target == rows:
            return self
        pad = self.lateral.new_zeros((target - rows, *self.lateral.shape[1:]))
        return dataclasses.replace(self, lateral=torch.cat([self.lateral, pad]))


# ---------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------
class StudyDataset(Dataset):
    """The usable studies of one split of a prepared folder, in the order of ``studies.csv``
    (subject, then time), so each patient's studies are contiguous and time-ordered.

    Item (a dict): ``frontal`` uint8 [1, S, S] (cropped, not yet normalised: the :class:`Collator` normalises
    the whole batch at once); ``lateral`` uint8 [1, S, S] or None; ``text`` str; ``study_id``, ``subject_id``,
    ``index`` int; ``sequence_position`` int (-1 for a single study).

    Images come from the prepared cache (``images_{size}.npy``, memory-mapped) when ``use_cache`` and it
    exists, else from the original JPEGs under the MIMIC root recorded in ``prepare.json``.
    """

    def __init__(
        self,
        prepared_dir: str | os.PathLike,
        split: str = "train",
        image_size: int = 224,
        train: bool = True,
        use_cache: bool = True,
    ):
        self.root = Path(prepared_dir)
        info_path, table_path = self.root / "prepare.json", self.root / "studies.csv"
        for p in (info_path, table_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: not found; run `medst prepare --mimic-root ... --out {self.root}` first")
        self.info = json.loads(info_path.read_text())
        table = pd.read_csv(
            table_path, keep_default_na=False, dtype={"split": str, "frontal": str, "lateral": str, "text": str}
        )
        if split not in set(table["split"]):
            raise ValueError(
                f"{table_path}: no studies in split {split!r} (splits present: {sorted(set(table['split']))})"
            )
        self.table = table[table["split"] == split].reset_index(drop=True)
        self.split, self.image_size, self.train = split, int(image_size), bool(train)
        self.transform = ImageTransform(image_size, train)
        self.side = self.transform.side
        self.study_ids: list[int] = self.table["study_id"].astype(int).tolist()
        self.subject_ids: list[int] = self.table["subject_id"].astype(int).tolist()
        self.texts: list[str] = self.table["text"].astype(str).tolist()
        self.frontal_rows: list[int] = self.table["frontal_cache"].astype(int).tolist()
        self.lateral_rows: list[int] = self.table["lateral_cache"].astype(int).tolist()
        self.frontal_paths: list[str] = self.table["frontal"].tolist()
        self.lateral_paths: list[str] = self.table["lateral"].tolist()
        self.has_lateral: list[bool] = [bool(p) for p in self.lateral_paths]
        self.mimic_root = Path(self.info["mimic_root"])

        cache_file = self.info.get("cache_file")
        self.cache_path = self.root / cache_file if (use_cache and cache_file) else None
        if use_cache and cache_file and not self.cache_path.is_file():
            raise FileNotFoundError(
                f"{self.cache_path}: image cache named in {info_path} is missing; "
                f"re-run `medst prepare` or pass use_cache=False"
            )
        if self.cache_path is not None and self.info["cache_size"] < self.side:
            warnings.warn(
                f"{self.cache_path}: cache side {self.info['cache_size']} < {self.side} needed for "
                f"image_size={image_size}; images will be upsampled (prepare with a larger cache_size)",
                stacklevel=2,
            )
        if self.cache_path is None and not self.mimic_root.is_dir():
            raise FileNotFoundError(f"{self.mimic_root}: MIMIC root recorded in {info_path} not found and no cache")
        self._cache: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.study_ids)

    def __getstate__(self) -> dict[str, Any]:  # worker processes open their own memory map
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def windows(self, length: int) -> list[tuple[int, ...]]:
        """Every sequence of ``length`` consecutive studies of one patient (stride 1), as dataset indices."""
        return sliding_windows(self.subject_ids, length)

    def image(self, index: int, view: str = "frontal") -> np.ndarray | None:
        """uint8 [side, side] resized-and-padded image of ``view`` ('frontal' or 'lateral'); None: no lateral."""
        row = (self.frontal_rows if view == "frontal" else self.lateral_rows)[index]
        path = (self.frontal_paths if view == "frontal" else self.lateral_paths)[index]
        if not path:
            return None
        if self.cache_path is not None:
            if self._cache is None:
                self._cache = np.load(self.cache_path, mmap_mode="r")
            img = np.array(self._cache[row])  # a copy: the memory map is read-only
            return img if img.shape == (self.side, self.side) else resize_pad(img, self.side)
        return resize_pad(read_image(self.mimic_root / path, reduce_to=self.side), self.side)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        lateral = self.image(i, "lateral")
        return {
            "frontal": self.transform.crop(self.image(i, "frontal")),
            "lateral": self.transform.crop(lateral) if lateral is not None else None,
            "text": self.texts[i],
            "study_id": self.study_ids[i],
            "subject_id": self.subject_ids[i],
            "index": i,
            "sequence_position": getattr(index, "position", -1),
        }


# ---------------------------------------------------------------------------------------------------------
# Collate
# ---------------------------------------------------------------------------------------------------------
def _images(images: Sequence[Tensor]) -> Tensor:
    """uint8 [1, S, S] crops -> normalised float [N, 3, S, S]; float [3, S, S] images are only stacked."""
    x = torch.stack(list(images))
    return normalise(x) if x.dtype == torch.uint8 else x.float()


class Collator:
    """Items of :class:`StudyDataset` -> :class:`Batch` (use as ``DataLoader(collate_fn=...)``).

    ``tokenizer``: a callable Hugging Face (fast) tokenizer. Texts are padded to ``max_length`` (the published
    112 tokens) unless ``padding="longest"``. ``lateral_bucket`` > 0 pads the compact laterals to a multiple
    of it (:meth:`Batch.pad_laterals`), in the loader's workers.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 112,
        sequence_length: int = 4,
        padding: str = "max_length",
        lateral_bucket: int = 0,
    ):
        self.tokenizer, self.max_length, self.padding = tokenizer, int(max_length), padding
        self.L = int(sequence_length)
        self.lateral_bucket = int(lateral_bucket)

    def _num_sequences(self, items: Sequence[dict[str, Any]]) -> int:
        positions = [int(it.get("sequence_position", -1)) for it in items]
        lead = 0
        while lead < len(positions) and positions[lead] >= 0:
            lead += 1
        ok = (
            lead % self.L == 0
            and all(positions[k] == k % self.L for k in range(lead))
            and all(p < 0 for p in positions[lead:])
        )
        if ok:
            for s in range(lead // self.L):
                seq = items[s * self.L : (s + 1) * self.L]
                ok = ok and len({it["subject_id"] for it in seq}) == 1
        if not ok:
            raise ValueError(
                f"Collator: batch layout is not 'whole sequences of L={self.L} first, then singles' "
                f"(sequence positions {positions}); use SequenceBatchSampler with the same L"
            )
        return lead // self.L

    def __call__(self, items: Sequence[dict[str, Any]]) -> Batch:
        if not items:
            raise ValueError("Collator: empty batch")
        num_sequences = self._num_sequences(items)
        frontal = _images([it["frontal"] for it in items])
        laterals = [it["lateral"] for it in items if it["lateral"] is not None]
        lateral = _images(laterals) if laterals else frontal.new_zeros((0, *frontal.shape[1:]))
        texts = [it["text"] for it in items]
        enc = self.tokenizer(
            texts, padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return Batch(
            frontal=frontal,
            lateral=lateral,
            has_lateral=torch.tensor([it["lateral"] is not None for it in items], dtype=torch.bool),
            input_ids=enc["input_ids"].long(),
            attention_mask=enc["attention_mask"].long(),
            num_sequences=num_sequences,
            sequence_length=self.L,
            study_ids=[int(it["study_id"]) for it in items],
            subject_ids=[int(it["subject_id"]) for it in items],
            texts=texts,
        ).pad_laterals(self.lateral_bucket)


def make_loader(
    prepared_dir: str | os.PathLike,
    tokenizer: Any,
    *,
    split: str = "train",
    image_size: int = 224,
    sequences_per_batch: int = 2,
    singles_per_batch: int = 0,
    train: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    max_length: int = 112,
    sequence_length: int = 4,
    use_cache: bool = True,
    drop_last: bool | None = None,
    prefetch_factor: int | None = None,
    augment: bool | None = None,
    lateral_bucket: int = 0,
) -> DataLoader:
    """A DataLoader of :class:`Batch` over one split of a prepared folder (every setting a keyword; from a
    profile's configuration: :func:`loader_from_config`).

    ``train=True``: random crops, shuffled batches (call ``loader.batch_sampler.set_epoch(epoch)`` each epoch),
    incomplete batches dropped. ``train=False``: centre crops, fixed order, nothing dropped. ``augment`` sets the
    crops alone (None: as ``train``); ``lateral_bucket`` pads the laterals (:class:`Collator`).
    """
    augment = train if augment is None else augment
    dataset = StudyDataset(prepared_dir, split=split, image_size=image_size, train=augment, use_cache=use_cache)
    sampler = SequenceBatchSampler(
        dataset,
        sequences_per_batch,
        singles_per_batch,
        sequence_length=sequence_length,
        shuffle=train,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=train if drop_last is None else drop_last,
    )
    if num_workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenising happens in the workers
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor or 4}
    collate = Collator(tokenizer, max_length=max_length, sequence_length=sequence_length, lateral_bucket=lateral_bucket)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed + 1000003 * rank),
        **extra,
    )


def collator_from_config(cfg: Config, tokenizer: Any, *, lateral_bucket: int = 0) -> Collator:
    """The :class:`Collator` of a profile: texts padded to ``data.max_length`` tokens, sequences of
    ``data.sequence_length`` studies. ``lateral_bucket`` > 0 pads the laterals as pre-training does
    (``train.group_bucket``, for a model whose ``vision.group_bucket`` is the same)."""
    return Collator(
        tokenizer,
        max_length=cfg.data.max_length,
        sequence_length=cfg.data.sequence_length,
        lateral_bucket=lateral_bucket,
    )


def loader_from_config(
    cfg: Config,
    prepared_dir: str | os.PathLike,
    tokenizer: Any,
    *,
    split: str = "train",
    train: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    **overrides: Any,
) -> DataLoader:
    """The DataLoader of a profile's configuration over ``split`` of a prepared folder (Method §1 batches).

    From ``cfg``: ``data.image_size``, ``data.max_length``, ``data.sequence_length``, ``data.num_workers``,
    ``data.use_cache``, ``train.sequences_per_batch`` (S per process), ``train.singles_per_batch`` and
    ``train.seed``. ``train`` (None: ``split == "train"``) shuffles and drops incomplete batches; its crops are
    random when ``data.augment`` is also true, centred otherwise. ``rank`` and ``world_size`` give each process
    its share of every global batch (:class:`SequenceBatchSampler`). ``overrides`` replace any keyword of
    :func:`make_loader` (e.g. ``sequences_per_batch=4``, ``pin_memory=True``, ``lateral_bucket=16``).
    """
    train = split == "train" if train is None else train
    kwargs: dict[str, Any] = dict(
        split=split,
        image_size=cfg.data.image_size,
        sequences_per_batch=cfg.train.sequences_per_batch,
        singles_per_batch=cfg.train.singles_per_batch,
        train=train,
        augment=train and cfg.data.augment,
        num_workers=cfg.data.num_workers,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        max_length=cfg.data.max_length,
        sequence_length=cfg.data.sequence_length,
        use_cache=cfg.data.use_cache,
    )
    kwargs.update(overrides)
    return make_loader(prepared_dir, tokenizer, **kwargs)

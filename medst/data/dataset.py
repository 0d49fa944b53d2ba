"""Loading a prepared index (``medst prepare``) as Med-ST batches: S sequences of L studies, then singles.

Pieces, each usable on its own:

- :class:`ImageTransform` / :func:`eval_transform`: Method §1's resize-and-pad, random (train) or centre (eval)
  crop and normalisation, uint8 [H, W] -> float [3, S, S].
- :class:`StudyDataset`: one item per usable study of a split (frontal, optional lateral, report text).
- :class:`SequenceBatchSampler`: which studies form a batch (whole time-ordered sequences first, DDP-aware).
- :class:`Collator`: items -> a typed :class:`Batch` (tokenised text, compact lateral views, S and L).
- :func:`make_loader`: the three above in a ``torch.utils.data.DataLoader``.

How the collator knows S: the sampler yields :class:`SequenceIndex` values (plain ``int`` subclasses that
also carry their position in a sequence), the dataset copies that position into the item, and the collator
counts the leading run of sequence items. A plain integer index is a single study.
"""
from __future__ import annotations

import json
import os
import warnings
from collections import deque
import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from medst.data.images import cache_side, read_image, resize_pad
from medst.data.mimic import sliding_windows

try:  # torchvision >= 0.16
    from torchvision.transforms import v2 as _T

    def _to_float() -> Any:
        return _T.ToDtype(torch.float32, scale=True)
except ImportError:  # pragma: no cover - old torchvision
    from torchvision import transforms as _T

    def _to_float() -> Any:
        return _T.ConvertImageDtype(torch.float32)

MEAN, STD = 0.5, 0.5  # Method §1: the same on all three channels


# ---------------------------------------------------------------------------------------------------------
# Image transforms
# ---------------------------------------------------------------------------------------------------------
_NORMALISE = _T.Compose([_to_float(), _T.Normalize(mean=[MEAN], std=[STD])])


def normalise(images: Tensor) -> Tensor:
    """uint8 [..., 1, S, S] -> float32 [..., 3, S, S]: (x / 255 - 0.5) / 0.5 (Method §1), grey copied to 3 channels.

    Applied once per batch by the :class:`Collator` (a handful of large tensor ops instead of several small
    ones per image).
    """
    if images.dtype != torch.uint8 or images.ndim < 3 or images.shape[-3] != 1:
        raise ValueError(f"normalise expects uint8 [..., 1, S, S], got {images.dtype} {tuple(images.shape)}")
    x = _NORMALISE(images)
    return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()


class ImageTransform:
    """uint8 [H, W] grey image -> float32 [3, S, S] normalised with mean 0.5, std 0.5 (Method §1).

    An input that is not already ``cache_side(S) × cache_side(S)`` is first resized (long side) and
    zero-padded to that square; then a random crop (``train=True``) or the centre crop of side S is taken.
    The random crop draws from torch's global generator (seeded per DataLoader worker).
    :meth:`crop` stops before normalising (uint8 [1, S, S]), which is what the Dataset returns.
    """

    def __init__(self, image_size: int, train: bool):
        self.image_size, self.train = int(image_size), bool(train)
        self.side = cache_side(self.image_size)
        self._crop = _T.RandomCrop(self.image_size) if train else _T.CenterCrop(self.image_size)

    def crop(self, img: np.ndarray) -> Tensor:
        """uint8 [H, W] -> uint8 [1, S, S]: resize-and-pad to the cache side if needed, then crop."""
        if img.ndim != 2:
            raise ValueError(f"ImageTransform expects a uint8 [H, W] image, got shape {tuple(img.shape)}")
        if img.shape != (self.side, self.side):
            img = resize_pad(img, self.side)
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.uint8))[None]  # [1, side, side] uint8
        return self._crop(x).contiguous()                                      # [1, S, S] uint8

    def __call__(self, img: np.ndarray) -> Tensor:
        return normalise(self.crop(img))                                       # [3, S, S] float32

    def __repr__(self) -> str:
        return f"ImageTransform(image_size={self.image_size}, train={self.train}, side={self.side})"


def train_transform(image_size: int) -> ImageTransform:
    """Resize-and-pad, random crop of ``image_size``, normalise: uint8 [H, W] -> float [3, S, S]."""
    return ImageTransform(image_size, train=True)


def eval_transform(image_size: int) -> ImageTransform:
    """Resize-and-pad, centre crop of ``image_size``, normalise: uint8 [H, W] -> float [3, S, S]."""
    return ImageTransform(image_size, train=False)


# ---------------------------------------------------------------------------------------------------------
# Batch
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """One Med-ST batch. The first ``num_sequences * sequence_length`` studies are S whole sequences, each L
    consecutive studies of one patient in time order; the remaining studies are singles."""

    frontal: Tensor         # [B, 3, H, W] float
    lateral: Tensor         # [B_lat, 3, H, W] float: only the studies that have a lateral, in batch order
                            # (then zero rows after :meth:`pad_laterals`)
    has_lateral: Tensor     # [B] bool
    input_ids: Tensor       # [B, T] long
    attention_mask: Tensor  # [B, T] long
    num_sequences: int      # S
    sequence_length: int    # L
    study_ids: list[int]
    subject_ids: list[int]
    texts: list[str]

    @property
    def size(self) -> int:
        """B, the number of studies."""
        return int(self.frontal.shape[0])

    def _map(self, fn) -> "Batch":
        return Batch(**{f.name: fn(getattr(self, f.name)) if isinstance(getattr(self, f.name), Tensor)
                        else getattr(self, f.name) for f in fields(self)})

    def pad_laterals(self, bucket: int) -> "Batch":
        """The batch with zero rows appended to ``lateral`` up to a multiple of ``bucket`` (at most B rows), so
        that the lateral group of MoVE takes few sizes (``MoVE.group_bucket``, static shapes for
        ``torch.compile``). ``has_lateral`` still marks the real ones. ``bucket`` 0 returns the batch as is."""
        rows = self.lateral.shape[0]
        target = min(-(-rows // bucket) * bucket, self.size) if bucket > 0 else rows
        if target == rows:
            return self
        pad = self.lateral.new_zeros((target - rows, *self.lateral.shape[1:]))
        return dataclasses.replace(self, lateral=torch.cat([self.lateral, pad]))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The batch with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory (called by ``DataLoader(pin_memory=True)``)."""
        return self._map(lambda t: t.pin_memory())


# ---------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------
class SequenceIndex(int):
    """A dataset index that also says "position ``position`` of a sequence in this batch"."""

    position: int

    def __new__(cls, index: int, position: int) -> "SequenceIndex":
        obj = super().__new__(cls, index)
        obj.position = int(position)
        return obj

    def __reduce__(self):
        return (SequenceIndex, (int(self), self.position))

    def __repr__(self) -> str:
        return f"SequenceIndex({int(self)}, position={self.position})"


class StudyDataset(Dataset):
    """The usable studies of one split of a prepared folder, in the order of ``studies.csv``
    (subject, then time), so each patient's studies are contiguous and time-ordered.

    Item (a dict): ``frontal`` uint8 [1, S, S] (cropped, not yet normalised: the :class:`Collator` normalises
    the whole batch at once); ``lateral`` uint8 [1, S, S] or None; ``text`` str; ``study_id``, ``subject_id``,
    ``index`` int; ``sequence_position`` int (-1 for a single study).

    Images come from the prepared cache (``images_{size}.npy``, memory-mapped) when ``use_cache`` and it
    exists, else from the original JPEGs under the MIMIC root recorded in ``prepare.json``.
    """

    def __init__(self, prepared_dir: str | os.PathLike, split: str = "train", image_size: int = 224,
                 train: bool = True, use_cache: bool = True):
        self.root = Path(prepared_dir)
        info_path, table_path = self.root / "prepare.json", self.root / "studies.csv"
        for p in (info_path, table_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: not found; run `medst prepare --mimic-root ... --out {self.root}` first")
        self.info = json.loads(info_path.read_text())
        table = pd.read_csv(table_path, keep_default_na=False,
                            dtype={"split": str, "frontal": str, "lateral": str, "text": str})
        if split not in set(table["split"]):
            raise ValueError(f"{table_path}: no studies in split {split!r} "
                             f"(splits present: {sorted(set(table['split']))})")
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
            raise FileNotFoundError(f"{self.cache_path}: image cache named in {info_path} is missing; "
                                    f"re-run `medst prepare` or pass use_cache=False")
        if self.cache_path is not None and self.info["cache_size"] < self.side:
            warnings.warn(f"{self.cache_path}: cache side {self.info['cache_size']} < {self.side} needed for "
                          f"image_size={image_size}; images will be upsampled (prepare with a larger cache_size)")
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
# Sampler
# ---------------------------------------------------------------------------------------------------------
class SequenceBatchSampler(Sampler[list[int]]):
    """Batches of S whole sequences (S·L indices, each sequence in time order) followed by single studies.

    - Every window of L consecutive studies of a patient is one sequence; each epoch uses every sequence once,
      in an order shuffled with ``(seed, epoch)`` (call :meth:`set_epoch`).
    - No two sequences of one patient share a batch (a conflicting sequence waits for the next batch), so no
      study appears twice in a batch.
    - Singles are studies of patients with fewer than L studies (they belong to no sequence, Method §1),
      cycled through in shuffled order, no study twice in a batch. With ``sequences_per_batch=0`` the batches
      are singles only and every study of the split is used once per epoch.
    - DDP: every rank computes the same list of *global* batches of ``world_size·S`` sequences and
      ``world_size·singles`` singles (no patient twice in a global batch, so the gathered negatives of the
      global loss are all true negatives) and takes its own slice: rank r gets sequences ``r·S … r·S+S-1``
      and the r-th share of the singles. Sequences stay whole, and ``world_size`` processes see exactly the
      studies that one process with the global batch would see. ``drop_last`` drops incomplete batches
      (always, with several processes).

    ``dataset`` needs ``__len__``, ``subject_ids`` (list) and ``windows(length)`` (see :class:`StudyDataset`).
    """

    def __init__(self, dataset: Any, sequences_per_batch: int, singles_per_batch: int, sequence_length: int = 4,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True):
        if sequences_per_batch < 0 or singles_per_batch < 0 or sequences_per_batch + singles_per_batch == 0:
            raise ValueError("SequenceBatchSampler: need sequences_per_batch >= 0, singles_per_batch >= 0 and at "
                             f"least one of them > 0 (got {sequences_per_batch}, {singles_per_batch})")
        if not 0 <= rank < world_size:
            raise ValueError(f"SequenceBatchSampler: rank {rank} not in [0, world_size={world_size})")
        self.S, self.n_singles, self.L = int(sequences_per_batch), int(singles_per_batch), int(sequence_length)
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, int(seed), int(rank), int(world_size)
        self.drop_last, self.epoch = drop_last, 0
        subjects = list(dataset.subject_ids)
        name = getattr(dataset, "split", "this")
        if self.S > 0:
            self.sequences = [tuple(w) for w in dataset.windows(self.L)]
            if not self.sequences:
                raise ValueError(f"SequenceBatchSampler: no patient in the {name!r} split has {self.L} studies, so "
                                 "there are no sequences; use sequences_per_batch=0")
            in_sequence = {subjects[w[0]] for w in self.sequences}
            self.pool = [i for i in range(len(dataset)) if subjects[i] not in in_sequence]
            if self.n_singles > 0 and not self.pool:
                raise ValueError(f"SequenceBatchSampler: every patient of the {name!r} split has >= {self.L} studies, "
                                 "so there are no single studies; use singles_per_batch=0")
        else:
            self.sequences, self.pool = [], list(range(len(dataset)))
        self.sequence_subject = [subjects[w[0]] for w in self.sequences]
        self._plan_cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` (call before iterating, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _sequence_batches(self, rng: np.random.Generator, size: int) -> list[list[int]]:
        """Lists of sequence numbers, at most ``size`` each, no patient twice in one list.

        Each patient's k sequences are spread evenly over the epoch (the j-th of them at about position j/k,
        in a random order when shuffling), so a patient with many studies does not pile up at the end, where
        its sequences could only fill batches one at a time.
        """
        n = len(self.sequences)
        seq_subjects = np.asarray(self.sequence_subject)
        starts = np.flatnonzero(np.r_[True, seq_subjects[1:] != seq_subjects[:-1]]) if n else np.zeros(0, dtype=int)
        counts = np.diff(np.r_[starts, n])
        key = np.empty(n)
        for start, k in zip(starts.tolist(), counts.tolist()):
            if self.shuffle:
                key[start:start + k] = (rng.permutation(k) + rng.random(k)) / k
            else:
                key[start:start + k] = (np.arange(k) + 0.5) / k
        order = np.lexsort((rng.random(n) if self.shuffle else np.arange(n), key)).tolist()
        pending, batches = deque(order), []
        while pending:
            batch, subjects, deferred = [], set(), []
            while pending and len(batch) < size:
                j = pending.popleft()
                if self.sequence_subject[j] in subjects:
                    deferred.append(j)
                else:
                    batch.append(j)
                    subjects.add(self.sequence_subject[j])
            pending.extendleft(reversed(deferred))
            batches.append(batch)
        return batches

    def _plan(self) -> list[list[int]]:
        """This rank's batches for the current epoch (cached): its slice of every global batch."""
        if self._plan_cache is not None and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1]
        rng = self._rng()
        W, r = self.world_size, self.rank
        drop = self.drop_last or W > 1  # every process must get a full share of every global batch
        singles = _Cycle(self.pool, rng, self.shuffle)
        batches: list[list[int]] = []
        if self.S > 0:
            for seq_numbers in self._sequence_batches(rng, self.S * W):
                if drop and len(seq_numbers) < self.S * W:
                    continue
                studies = {i for j in seq_numbers for i in self.sequences[j]}
                extra = singles.take(self.n_singles * W, exclude=studies)
                mine = seq_numbers[r * self.S:(r + 1) * self.S]
                batch: list[int] = [SequenceIndex(i, p) for j in mine for p, i in enumerate(self.sequences[j])]
                batch += extra[r * self.n_singles:(r + 1) * self.n_singles]
                batches.append(batch)
        else:
            order = rng.permutation(len(self.pool)).tolist() if self.shuffle else list(range(len(self.pool)))
            size = self.n_singles * W
            for start in range(0, len(order), size):
                chunk = [self.pool[k] for k in order[start:start + size]]
                if len(chunk) == size or not drop:
                    share = -(-len(chunk) // W)
                    batches.append(chunk[r * share:(r + 1) * share])
            batches = [b for b in batches if b]
        self._plan_cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._plan()

    def __len__(self) -> int:
        return len(self._plan())


class _Cycle:
    """Endless shuffled passes over ``items``; ``take(k)`` skips excluded and already-taken items."""

    def __init__(self, items: Sequence[int], rng: np.random.Generator, shuffle: bool):
        self.items, self.rng, self.shuffle = list(items), rng, shuffle
        self.item_set = set(self.items)
        self.queue: deque[int] = deque()

    def _refill(self) -> None:
        order = self.rng.permutation(len(self.items)).tolist() if self.shuffle else range(len(self.items))
        self.queue.extend(self.items[k] for k in order)

    def take(self, k: int, exclude: set[int]) -> list[int]:
        out: list[int] = []
        available = len(self.item_set) - len(self.item_set.intersection(exclude))
        if k > available:
            raise ValueError(f"SequenceBatchSampler: {k} singles per batch requested but only {available} "
                             "single studies exist")
        taken = set(exclude)
        skipped: list[int] = []
        while len(out) < k:
            if not self.queue:
                self._refill()
            item = self.queue.popleft()
            if item in taken:
                skipped.append(item)
            else:
                out.append(item)
                taken.add(item)
        self.queue.extendleft(reversed(skipped))
        return out


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

    def __init__(self, tokenizer: Any, max_length: int = 112, sequence_length: int = 4, padding: str = "max_length",
                 lateral_bucket: int = 0):
        self.tokenizer, self.max_length, self.padding = tokenizer, int(max_length), padding
        self.L = int(sequence_length)
        self.lateral_bucket = int(lateral_bucket)

    def _num_sequences(self, items: Sequence[dict[str, Any]]) -> int:
        positions = [int(it.get("sequence_position", -1)) for it in items]
        lead = 0
        while lead < len(positions) and positions[lead] >= 0:
            lead += 1
        ok = lead % self.L == 0 and all(positions[k] == k % self.L for k in range(lead)) \
            and all(p < 0 for p in positions[lead:])
        if ok:
            for s in range(lead // self.L):
                seq = items[s * self.L:(s + 1) * self.L]
                ok = ok and len({it["subject_id"] for it in seq}) == 1
        if not ok:
            raise ValueError(f"Collator: batch layout is not 'whole sequences of L={self.L} first, then singles' "
                             f"(sequence positions {positions}); use SequenceBatchSampler with the same L")
        return lead // self.L

    def __call__(self, items: Sequence[dict[str, Any]]) -> Batch:
        if not items:
            raise ValueError("Collator: empty batch")
        num_sequences = self._num_sequences(items)
        frontal = _images([it["frontal"] for it in items])
        laterals = [it["lateral"] for it in items if it["lateral"] is not None]
        lateral = _images(laterals) if laterals else frontal.new_zeros((0, *frontal.shape[1:]))
        texts = [it["text"] for it in items]
        enc = self.tokenizer(texts, padding=self.padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
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


def make_loader(prepared_dir: str | os.PathLike, tokenizer: Any, *, split: str = "train", image_size: int = 224,
                sequences_per_batch: int = 2, singles_per_batch: int = 0, train: bool = True, num_workers: int = 0,
                seed: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False, max_length: int = 112,
                sequence_length: int = 4, use_cache: bool = True, drop_last: bool | None = None,
                prefetch_factor: int | None = None) -> DataLoader:
    """A DataLoader of :class:`Batch` over one split of a prepared folder.

    ``train=True``: random crops, shuffled batches (call ``loader.batch_sampler.set_epoch(epoch)`` each epoch),
    incomplete batches dropped. ``train=False``: centre crops, fixed order, nothing dropped.
    """
    dataset = StudyDataset(prepared_dir, split=split, image_size=image_size, train=train, use_cache=use_cache)
    sampler = SequenceBatchSampler(dataset, sequences_per_batch, singles_per_batch, sequence_length=sequence_length,
                                   shuffle=train, seed=seed, rank=rank, world_size=world_size,
                                   drop_last=train if drop_last is None else drop_last)
    if num_workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenising happens in the workers
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor or 4}
    return DataLoader(dataset, batch_sampler=sampler,
                      collate_fn=Collator(tokenizer, max_length=max_length, sequence_length=sequence_length),
                      num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed + 1000003 * rank), **extra)

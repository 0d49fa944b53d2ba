"""CT volumes as model input (chapter 11): reading, windowing, batches of volume-report pairs, and the
radiograph-plus-volume batches that UniMedI trains on.

A volume as the models read it is a float tensor ``[1, D, H, W]`` (D slices, slice 0 the most inferior; each slice
an axial image with the patient's anterior at the top and the patient's right on the viewer's left, as radiologists
display CT), its Hounsfield units windowed to [0, 1] (:data:`HU_WINDOW`) and then normalised like the radiographs
(mean 0.5, std 0.5: values in [-1, 1]; Method §1).

A *slab* is ``slab`` consecutive slices (the depth of one 3-D patch of UniMedI's volume tokenizer); the mean slice of
a slab, copied to three channels, is a 2-D image in the radiographs' normalisation (:func:`slab_images`): what
text-guided slice selection hands to the 2-D path as a pseudo 2-D image.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from medst.config import Config
from medst.data.ct import CT_TABLE
from medst.data.dataset import Batch, TensorFields, loader_from_config
from medst.data.transforms import MEAN, STD

HU_WINDOW = (-1000.0, 400.0)  # HU mapped to 0 and 1 (air ... beyond soft tissue); values outside are clipped


def hu_to_unit(hu: np.ndarray | Tensor, window: tuple[float, float] = HU_WINDOW) -> np.ndarray | Tensor:
    """Hounsfield units -> [0, 1]: linear between ``window[0]`` (0) and ``window[1]`` (1), clipped outside."""
    lo, hi = window
    if isinstance(hu, Tensor):
        return ((hu.float() - lo) / (hi - lo)).clamp(0.0, 1.0)
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def normalise_unit(x: Tensor) -> Tensor:
    """[0, 1] -> the radiographs' normalisation, (x - 0.5) / 0.5 (Method §1)."""
    return (x - MEAN) / STD


def slab_images(volumes: Tensor, slab: int) -> Tensor:
    """Volumes [V, 1, D, H, W] (normalised) -> the mean slice of every slab, as 2-D images [V, D // slab, 3, H, W].

    The mean is taken in the normalised values (the normalisation is affine, so it equals normalising the mean
    windowed slice); the grey image is copied to three channels like a radiograph (Method §1). Slices beyond the
    last whole slab (D not a multiple of ``slab``) are left out."""
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"slab_images expects volumes [V, 1, D, H, W], got {tuple(volumes.shape)}")
    depth = volumes.shape[2] // slab * slab
    means = rearrange(volumes[:, 0, :depth], "v (s k) h w -> v s k h w", k=slab).mean(dim=2)
    return means[:, :, None].expand(-1, -1, 3, -1, -1)


@dataclass
class VolumeBatch(TensorFields):
    """V CT volumes and the reports of their studies."""

    volumes: Tensor  # [V, 1, D, H, W] float, normalised (see the module docstring)
    input_ids: Tensor  # [V, T] long
    attention_mask: Tensor  # [V, T] long
    study_ids: list[int]
    subject_ids: list[int]
    texts: list[str]

    @property
    def size(self) -> int:
        """V, the number of volumes."""
        return int(self.volumes.shape[0])


@dataclass
class PairedBatch:
    """One UniMedI training batch: a radiograph :class:`~medst.data.dataset.Batch` and a :class:`VolumeBatch`.

    The two halves are separate image-report pairs (the paper's data have no patient with both); the report
    space is what ties them together."""

    xray: Batch
    ct: VolumeBatch

    @property
    def size(self) -> int:
        """Image-report pairs in the batch: radiograph studies plus volumes."""
        return self.xray.size + self.ct.size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PairedBatch:
        return dataclasses.replace(self, xray=self.xray.to(device, non_blocking), ct=self.ct.to(device, non_blocking))

    def pin_memory(self) -> PairedBatch:
        return dataclasses.replace(self, xray=self.xray.pin_memory(), ct=self.ct.pin_memory())


# ---------------------------------------------------------------------------------------------------------
# Reading and windowing
# ---------------------------------------------------------------------------------------------------------
def read_volume(path: str | os.PathLike) -> np.ndarray:
    """A NIfTI volume -> float32 HU ``[D, H, W]`` in the radiological display (chapter 11).

    The image is first brought to the closest RAS+ voxel order (nibabel's ``as_closest_canonical``; the
    phantom's volumes already are: voxel axes i to the patient's right, j anterior, k up), then reordered to
    (slice k from the most inferior, row from anterior to posterior, column from the patient's right to left).
    Values are the stored ones with the header's scaling applied (the phantom stores plain HU).

    Raises ``FileNotFoundError`` / ``OSError`` / ``ValueError`` naming ``path`` when the file is missing,
    unreadable or not 3-D."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CT volume not found")
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises many types for a damaged header or a short data block
        raise OSError(f"{path}: cannot read the NIfTI volume ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: not a 3-D volume (shape {data.shape})")
    display = rearrange(data, "i j k -> k j i")[:, ::-1, ::-1]  # rows anterior first, columns patient's right first
    return np.ascontiguousarray(display, dtype=np.float32)


def unit_volume(hu: np.ndarray | Tensor, slices: int, size: int) -> Tensor:
    """HU ``[D, H, W]`` -> windowed float ``[1, slices, size, size]`` in [0, 1]: :func:`hu_to_unit`, then trilinear
    resampling (``torch.nn.functional.interpolate``, ``align_corners=False``) only when the shape differs."""
    x = torch.as_tensor(hu_to_unit(hu), dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"unit_volume expects a volume [D, H, W], got {tuple(x.shape)}")
    target = (int(slices), int(size), int(size))
    if tuple(x.shape) != target:
        x = F.interpolate(x[None, None], size=target, mode="trilinear", align_corners=False)[0, 0]
    return x[None]


def volume_tensor(hu: np.ndarray | Tensor, slices: int, size: int) -> Tensor:
    """HU ``[D, H, W]`` -> a volume as the models read it, float ``[1, slices, size, size]`` in [-1, 1]:
    :func:`unit_volume` then :func:`normalise_unit` (Method §1's normalisation)."""
    return normalise_unit(unit_volume(hu, slices, size))


# ---------------------------------------------------------------------------------------------------------
# Dataset and collate
# ---------------------------------------------------------------------------------------------------------
class VolumeDataset(Dataset):
    """The CT volumes of one split of a prepared folder (``ct_volumes.csv``, written by ``medst prepare``), in its
    order; each volume with its study's report (chapter 11).

    Every volume is read once here (:func:`read_volume`), windowed and resampled to ``[slices, image_size,
    image_size]`` (:func:`unit_volume`) and kept in memory as uint8 (0..255 of the window): ``slices · image_size²``
    bytes a volume, e.g. about 130 MB for 1,000 volumes of 32 × 64 × 64. ``progress`` shows a bar while reading.

    Item (a dict): ``volume`` float [1, D, H, W] normalised to [-1, 1] (the uint8 copy scaled back to [0, 1],
    then :func:`normalise_unit`); ``text`` str; ``study_id``, ``subject_id``, ``index`` int.
    """

    def __init__(
        self,
        prepared_dir: str | os.PathLike,
        split: str = "train",
        *,
        slices: int,
        image_size: int,
        progress: bool = False,
    ):
        self.root = Path(prepared_dir)
        info_path, table_path = self.root / "prepare.json", self.root / CT_TABLE
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path}: not found; run `medst prepare --mimic-root ... --out {self.root}`")
        if not table_path.is_file():
            raise FileNotFoundError(
                f"{table_path}: not found, so there are no CT volumes; make the phantom with CT "
                "(`medst synth --ct-fraction F`, or `data.ct_fraction` > 0 in the profile), then run `medst prepare`"
            )
        self.info = json.loads(info_path.read_text())
        self.mimic_root = Path(self.info["mimic_root"])
        table = pd.read_csv(table_path, keep_default_na=False, dtype={"split": str, "path": str, "text": str})
        self.table = table[table["split"] == split].reset_index(drop=True)
        if self.table.empty:
            raise ValueError(
                f"{table_path}: no CT volume in split {split!r} (splits present: {sorted(set(table['split']))})"
            )
        self.split, self.slices, self.image_size = split, int(slices), int(image_size)
        self.study_ids: list[int] = self.table["study_id"].astype(int).tolist()
        self.subject_ids: list[int] = self.table["subject_id"].astype(int).tolist()
        self.texts: list[str] = self.table["text"].astype(str).tolist()
        self.paths: list[Path] = [self.mimic_root / p for p in self.table["path"]]
        self.voxels = np.empty((len(self.paths), self.slices, self.image_size, self.image_size), dtype=np.uint8)
        bar = tqdm(self.paths, desc=f"read CT volumes ({split})", unit="volume", disable=not progress)
        for n, path in enumerate(bar):
            unit = unit_volume(read_volume(path), self.slices, self.image_size)[0]
            self.voxels[n] = unit.mul(255.0).round().to(torch.uint8).numpy()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        unit = torch.from_numpy(self.voxels[i]).float().div(255.0)
        return {
            "volume": normalise_unit(unit[None]),
            "text": self.texts[i],
            "study_id": self.study_ids[i],
            "subject_id": self.subject_ids[i],
            "index": i,
        }


class VolumeCollator:
    """Items of :class:`VolumeDataset` -> :class:`VolumeBatch`; reports tokenised as the radiographs'
    :class:`~medst.data.dataset.Collator` does (padded to ``max_length`` unless ``padding="longest"``, truncated at
    ``max_length``)."""

    def __init__(self, tokenizer: Any, max_length: int = 112, padding: str = "max_length"):
        self.tokenizer, self.max_length, self.padding = tokenizer, int(max_length), padding

    def __call__(self, items: Sequence[dict[str, Any]]) -> VolumeBatch:
        if not items:
            raise ValueError("VolumeCollator: empty batch")
        texts = [it["text"] for it in items]
        enc = self.tokenizer(
            texts, padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return VolumeBatch(
            volumes=torch.stack([it["volume"] for it in items]).float(),
            input_ids=enc["input_ids"].long(),
            attention_mask=enc["attention_mask"].long(),
            study_ids=[int(it["study_id"]) for it in items],
            subject_ids=[int(it["subject_id"]) for it in items],
            texts=texts,
        )


# ---------------------------------------------------------------------------------------------------------
# Radiographs and volumes in one loader
# ---------------------------------------------------------------------------------------------------------
class PairedDataset(Dataset):
    """One dataset over radiograph studies and CT volumes: indices ``0 .. len(studies) - 1`` are studies (the
    index object goes to ``studies`` as it is, so a :class:`~medst.data.sampler.SequenceIndex` keeps its position
    in a sequence), indices from ``len(studies)`` on are volumes (``volumes[index - len(studies)]``)."""

    def __init__(self, studies: Dataset, volumes: VolumeDataset):
        self.studies, self.volumes = studies, volumes
        self.offset = len(studies)
        self.root = getattr(studies, "root", volumes.root)
        self.split = getattr(studies, "split", volumes.split)

    def __len__(self) -> int:
        return self.offset + len(self.volumes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if int(index) < self.offset:
            return self.studies[index]
        return self.volumes[int(index) - self.offset]


class PairedBatchSampler(Sampler[list[int]]):
    """The radiograph batches of ``study_sampler`` (e.g. a :class:`~medst.data.sampler.SequenceBatchSampler`:
    S sequences, then singles), each followed by ``volumes_per_batch`` volume indices (offset by ``offset``, the
    number of studies in the :class:`PairedDataset`).

    Volume order: a permutation of the ``n_volumes`` volumes per (``seed``, epoch, pass), consumed
    ``volumes_per_batch · world_size`` at a time (a global batch, no volume twice in it); this rank takes its
    share (rank r: positions ``r · volumes_per_batch`` onwards), and a new permutation (the next pass) starts when
    one runs out. The batches of an epoch depend only on (``seed``, epoch) and the study sampler, so iterating
    again (e.g. skipping the first batches to resume) gives the same batches. ``shuffle=False``: volumes in
    order, every pass. :meth:`set_epoch` sets the epoch here and in the study sampler.
    """

    def __init__(
        self,
        study_sampler: Any,
        n_volumes: int,
        volumes_per_batch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        *,
        offset: int,
        shuffle: bool = True,
    ):
        if volumes_per_batch < 1:
            raise ValueError(f"PairedBatchSampler: volumes_per_batch must be >= 1, got {volumes_per_batch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"PairedBatchSampler: rank {rank} not in [0, world_size={world_size})")
        if volumes_per_batch * world_size > n_volumes:
            raise ValueError(
                f"PairedBatchSampler: {volumes_per_batch} volumes per batch on each of {world_size} process(es) "
                f"need {volumes_per_batch * world_size} different volumes, but the split has {n_volumes}"
            )
        self.study_sampler, self.n_volumes, self.V = study_sampler, int(n_volumes), int(volumes_per_batch)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.offset, self.shuffle, self.epoch = int(offset), bool(shuffle), 0

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` here and in the study sampler (call before iterating)."""
        self.epoch = int(epoch)
        if hasattr(self.study_sampler, "set_epoch"):
            self.study_sampler.set_epoch(epoch)

    def _pass(self, number: int) -> list[int]:
        """The volume order of pass ``number`` of the current epoch."""
        if not self.shuffle:
            return list(range(self.n_volumes))
        return np.random.default_rng([self.seed, self.epoch, number]).permutation(self.n_volumes).tolist()

    def volume_batches(self, count: int) -> list[list[int]]:
        """This rank's volume numbers (not offset) for the first ``count`` batches of the current epoch."""
        size, queue, passes, out = self.V * self.world_size, deque(), 0, []
        for _ in range(count):
            chunk: list[int] = []
            deferred: list[int] = []
            while len(chunk) < size:
                if not queue:
                    queue.extend(self._pass(passes))
                    passes += 1
                j = queue.popleft()
                (deferred if j in chunk else chunk).append(j)
            queue.extendleft(reversed(deferred))  # met again at a pass boundary: first in the next batch
            out.append(chunk[self.rank * self.V : (self.rank + 1) * self.V])
        return out

    def __iter__(self) -> Iterator[list[int]]:
        studies = list(self.study_sampler)
        for batch, volumes in zip(studies, self.volume_batches(len(studies))):
            yield list(batch) + [self.offset + j for j in volumes]

    def __len__(self) -> int:
        return len(self.study_sampler)


class PairedCollator:
    """Items of a :class:`PairedDataset` -> :class:`PairedBatch`: the study items (in order) through ``collator``
    (the radiographs' :class:`~medst.data.dataset.Collator`, which checks the sequence layout), the volume items
    (those with a ``volume``) through ``volume_collator``."""

    def __init__(self, collator: Any, volume_collator: VolumeCollator):
        self.collator, self.volume_collator = collator, volume_collator

    def __call__(self, items: Sequence[dict[str, Any]]) -> PairedBatch:
        studies = [it for it in items if "volume" not in it]
        volumes = [it for it in items if "volume" in it]
        if not studies or not volumes:
            raise ValueError(
                f"PairedCollator: a batch needs studies and volumes, got {len(studies)} and {len(volumes)} "
                "(use PairedBatchSampler)"
            )
        return PairedBatch(xray=self.collator(studies), ct=self.volume_collator(volumes))


def paired_loader_from_config(
    cfg: Config,
    prepared_dir: str | os.PathLike,
    tokenizer: Any,
    *,
    split: str = "train",
    train: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    **overrides: Any,
) -> DataLoader:
    """UniMedI's DataLoader of :class:`PairedBatch` over ``split`` of a prepared folder (chapter 11).

    The radiograph part is exactly :func:`~medst.data.dataset.loader_from_config` with the same arguments
    (``overrides`` included: same studies in the same batches); each batch also gets
    ``model.unimedi.volumes_per_batch`` volumes of the split (:class:`PairedBatchSampler`, seeded by ``train.seed``
    or an overriding ``seed``; shuffled when ``train``), read at ``model.unimedi.volume_slices`` ×
    ``data.image_size``² (or an overriding ``image_size``) by a :class:`VolumeDataset` (``progress``: a bar while
    reading). Workers and pinned memory are the radiograph loader's.
    """
    xray = loader_from_config(
        cfg, prepared_dir, tokenizer, split=split, train=train, rank=rank, world_size=world_size, **overrides
    )
    train = split == "train" if train is None else train
    u = cfg.model.unimedi
    volumes = VolumeDataset(
        prepared_dir,
        split,
        slices=u.volume_slices,
        image_size=overrides.get("image_size", cfg.data.image_size),
        progress=progress,
    )
    dataset = PairedDataset(xray.dataset, volumes)
    sampler = PairedBatchSampler(
        xray.batch_sampler,
        len(volumes),
        u.volumes_per_batch,
        overrides.get("seed", cfg.train.seed),
        rank,
        world_size,
        offset=dataset.offset,
        shuffle=train,
    )
    collate = PairedCollator(
        xray.collate_fn, VolumeCollator(tokenizer, max_length=overrides.get("max_length", cfg.data.max_length))
    )
    extra: dict[str, Any] = {}
    if xray.num_workers > 0:
        extra = {"persistent_workers": xray.persistent_workers, "prefetch_factor": xray.prefetch_factor}
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=xray.num_workers,
        pin_memory=xray.pin_memory,
        generator=xray.generator,
        **extra,
    )

"""CT volumes as training data (chapter 11): read_volume's orientation, volume_tensor, VolumeDataset, the paired
radiograph-plus-volume loader of UniMedI and the Trainer's choice of loader.

A 24-patient phantom at 32 px with one CT volume per patient (16 slices of 32 × 32) is made once for the module.
"""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from test_dataset import tiny_tokenizer

from medst.config import load_profile
from medst.data.dataset import Batch, loader_from_config
from medst.data.mimic import prepare
from medst.data.sampler import SequenceBatchSampler
from medst.data.volumes import (
    PairedBatch,
    PairedBatchSampler,
    PairedCollator,
    PairedDataset,
    VolumeBatch,
    VolumeCollator,
    VolumeDataset,
    hu_to_unit,
    normalise_unit,
    paired_loader_from_config,
    read_volume,
    volume_tensor,
)
from medst.phantom import synthesize
from medst.train.loop import Trainer, loader_for

SIZE, SLICES, VOLUMES_PER_BATCH = 32, 8, 4  # the model reads 8 slices: the phantom's 16 are resampled


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(prepared folder, ct_volumes.csv table, tokenizer, profile) of a tiny phantom with CT for every patient."""
    root = tmp_path_factory.mktemp("ct_phantom")
    synthesize(root, n_patients=24, image_size=SIZE, seed=0, ct_fraction=1.0, workers=1, progress=False)
    out = tmp_path_factory.mktemp("ct_prepared")
    prepare(root / "mimic-cxr-jpg", out, cache_size=37, workers=1, progress=False)
    table = pd.read_csv(out / "ct_volumes.csv", keep_default_na=False)
    tok = tiny_tokenizer(pd.read_csv(out / "studies.csv", keep_default_na=False)["text"].tolist())
    cfg = load_profile(
        "ci",
        [
            f"data.image_size={SIZE}",
            "data.max_length=32",
            "data.augment=false",  # centre crops: radiographs comparable tensor for tensor
            "train.sequences_per_batch=2",
            "train.singles_per_batch=2",
            "train.seed=7",
            "model.method=unimedi",
            f"model.unimedi.volume_slices={SLICES}",
            f"model.unimedi.volumes_per_batch={VOLUMES_PER_BATCH}",
        ],
    )
    return out, table, tok, cfg


def write_nifti(path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


# ---------------------------------------------------------------------------------------------------------
# reading and windowing
# ---------------------------------------------------------------------------------------------------------
def test_read_volume_gives_the_radiological_display_in_hu(tmp_path):
    NI, NJ, NK = 5, 4, 3
    data = np.full((NI, NJ, NK), -1000, dtype=np.int16)
    data[3, 1, 2] = 700  # i = 3 (towards the patient's right), j = 1 (towards anterior), k = 2 (the top slice)
    data[0, 0, 0] = 40
    write_nifti(tmp_path / "ras.nii.gz", data, np.diag([2.0, 2.0, 3.0, 1.0]))
    hu = read_volume(tmp_path / "ras.nii.gz")
    assert hu.shape == (NK, NJ, NI) and hu.dtype == np.float32
    # slice k; row 0 the most anterior (j = NJ - 1); column 0 the patient's right-most voxel (i = NI - 1)
    assert hu[2, NJ - 1 - 1, NI - 1 - 3] == 700.0 and hu[0, NJ - 1, NI - 1] == 40.0
    assert np.count_nonzero(hu != -1000.0) == 2

    # the same array with i running to the patient's left (LAS): reoriented through the affine first
    write_nifti(tmp_path / "las.nii.gz", data, np.diag([-2.0, 2.0, 3.0, 1.0]))
    las = read_volume(tmp_path / "las.nii.gz")
    assert las[2, NJ - 1 - 1, 3] == 700.0 and las[0, NJ - 1, 0] == 40.0

    # stored values with a scaling in the header come back in HU
    scaled = nib.Nifti1Image(((data + 1024) // 2).astype(np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    scaled.header.set_slope_inter(2.0, -1024.0)
    nib.save(scaled, str(tmp_path / "scaled.nii.gz"))
    np.testing.assert_array_equal(read_volume(tmp_path / "scaled.nii.gz"), hu)


def test_read_volume_names_a_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.nii.gz"):
        read_volume(tmp_path / "nothing.nii.gz")
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti file" * 40))
    with pytest.raises(OSError, match="broken.nii.gz"):
        read_volume(bad)
    write_nifti(tmp_path / "flat.nii.gz", np.zeros((4, 4), dtype=np.int16), np.eye(4))
    with pytest.raises(ValueError, match="flat.nii.gz.*not a 3-D"):
        read_volume(tmp_path / "flat.nii.gz")


def test_volume_tensor_window_shape_and_depth_resampling():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1500.0, 1000.0, size=(6, 8, 8)).astype(np.float32)
    x = volume_tensor(hu, 6, 8)
    assert x.shape == (1, 6, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0  # air and below, bone and above are clipped
    torch.testing.assert_close(x[0], normalise_unit(torch.from_numpy(hu_to_unit(hu))))
    torch.testing.assert_close(volume_tensor(torch.from_numpy(hu), 6, 8), x)  # a tensor works alike

    # a ramp in depth, halved: each new slice is the mean of two (trilinear, align_corners=False)
    unit = np.broadcast_to(np.linspace(0.1, 0.6, 6, dtype=np.float32)[:, None, None], (6, 8, 8))
    lo, hi = -1000.0, 400.0
    y = volume_tensor(lo + unit * (hi - lo), 3, 4)
    assert y.shape == (1, 3, 4, 4)
    want = normalise_unit(torch.from_numpy(unit[0::2, 0, 0] + unit[1::2, 0, 0]) / 2)
    torch.testing.assert_close(y[0, :, 0, 0], want, atol=1e-5, rtol=0)
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0


# ---------------------------------------------------------------------------------------------------------
# VolumeDataset and VolumeCollator
# ---------------------------------------------------------------------------------------------------------
def test_volume_dataset_on_the_phantom(data):
    out, table, tok, cfg = data
    ds = VolumeDataset(out, "train", slices=SLICES, image_size=SIZE)
    rows = table[table["split"] == "train"].reset_index(drop=True)
    assert len(ds) == len(rows) > VOLUMES_PER_BATCH
    assert ds.voxels.shape == (len(rows), SLICES, SIZE, SIZE) and ds.voxels.dtype == np.uint8
    assert ds.texts == rows["text"].tolist() and ds.study_ids == rows["study_id"].tolist()
    mimic_root = ds.mimic_root
    for i in (0, len(ds) - 1):
        item = ds[i]
        assert item["volume"].shape == (1, SLICES, SIZE, SIZE) and item["volume"].dtype == torch.float32
        assert item["text"] == rows["text"][i] and item["study_id"] == rows["study_id"][i]
        assert item["subject_id"] == rows["subject_id"][i]
        full = volume_tensor(read_volume(mimic_root / rows["path"][i]), SLICES, SIZE)
        assert (item["volume"] - full).abs().max() <= 1.01 / 255 * 2  # only the uint8 rounding in between
        assert float(item["volume"].std()) > 0.1  # anatomy, not a blank volume
    batch = VolumeCollator(tok, max_length=32)([ds[0], ds[1], ds[2]])
    assert isinstance(batch, VolumeBatch) and batch.size == 3
    assert batch.volumes.shape == (3, 1, SLICES, SIZE, SIZE)
    assert batch.input_ids.shape == batch.attention_mask.shape == (3, 32)
    assert batch.texts == ds.texts[:3] and batch.subject_ids == ds.subject_ids[:3]
    longest = VolumeCollator(tok, max_length=32, padding="longest")([ds[0]])
    assert longest.input_ids.shape[1] == int(longest.attention_mask.sum()) <= 32


def test_volume_dataset_errors(data, tmp_path):
    out, *_ = data
    shutil.copy(out / "prepare.json", tmp_path / "prepare.json")  # a prepared folder without CT
    with pytest.raises(FileNotFoundError, match=r"ct_volumes\.csv.*--ct-fraction"):
        VolumeDataset(tmp_path, "train", slices=SLICES, image_size=SIZE)
    with pytest.raises(ValueError, match=r"ct_volumes\.csv: no CT volume in split 'nowhere'"):
        VolumeDataset(out, "nowhere", slices=SLICES, image_size=SIZE)
    with pytest.raises(FileNotFoundError, match="prepare.json"):
        VolumeDataset(tmp_path / "empty", "train", slices=SLICES, image_size=SIZE)


# ---------------------------------------------------------------------------------------------------------
# the paired loader
# ---------------------------------------------------------------------------------------------------------
def epoch_batches(loader, epoch: int) -> list:
    loader.batch_sampler.set_epoch(epoch)
    return list(loader)


def same_paired(a: PairedBatch, b: PairedBatch) -> bool:
    return (
        a.xray.study_ids == b.xray.study_ids
        and a.ct.study_ids == b.ct.study_ids
        and torch.equal(a.xray.frontal, b.xray.frontal)
        and torch.equal(a.ct.volumes, b.ct.volumes)
        and torch.equal(a.ct.input_ids, b.ct.input_ids)
    )


def test_paired_loader_adds_volumes_to_the_radiograph_batches(data):
    out, table, tok, cfg = data
    xray = loader_from_config(cfg, out, tok)
    paired = paired_loader_from_config(cfg, out, tok)
    assert isinstance(paired.dataset, PairedDataset) and isinstance(paired.batch_sampler, PairedBatchSampler)
    assert isinstance(paired.collate_fn, PairedCollator) and len(paired) == len(xray) >= 6
    texts = dict(zip(table["study_id"], table["text"]))
    train_studies = set(table.loc[table["split"] == "train", "study_id"])
    for epoch in (0, 1):
        plain, both = epoch_batches(xray, epoch), epoch_batches(paired, epoch)
        assert len(plain) == len(both)
        drawn: list[int] = []
        for x, p in zip(plain, both):
            assert isinstance(p, PairedBatch) and isinstance(p.xray, Batch)
            assert p.xray.study_ids == x.study_ids and p.xray.num_sequences == x.num_sequences == 2
            assert torch.equal(p.xray.frontal, x.frontal) and torch.equal(p.xray.input_ids, x.input_ids)
            assert p.ct.size == VOLUMES_PER_BATCH and p.size == x.size + VOLUMES_PER_BATCH
            assert p.ct.volumes.shape == (VOLUMES_PER_BATCH, 1, SLICES, SIZE, SIZE)
            assert len(set(p.ct.study_ids)) == VOLUMES_PER_BATCH and set(p.ct.study_ids) <= train_studies
            assert p.ct.texts == [texts[s] for s in p.ct.study_ids]
            drawn += p.ct.study_ids
        counts = Counter(drawn)  # passes over the whole split, one after another
        assert set(counts) == train_studies and max(counts.values()) - min(counts.values()) <= 1
    other = paired_loader_from_config(cfg, out, tok, seed=8)
    assert [b.ct.study_ids for b in epoch_batches(other, 0)] != [b.ct.study_ids for b in epoch_batches(paired, 0)]


def test_paired_loader_is_reproducible_and_resumes_mid_epoch(data):
    out, _, tok, cfg = data
    a, b = paired_loader_from_config(cfg, out, tok), paired_loader_from_config(cfg, out, tok)
    first, again = epoch_batches(a, 1), epoch_batches(b, 1)
    assert len(first) == len(again) and all(same_paired(x, y) for x, y in zip(first, again))
    assert [x.ct.study_ids for x in epoch_batches(a, 0)] != [x.ct.study_ids for x in first]  # epochs differ
    # the Trainer's loader of epoch 1, resumed after 3 batches (through its _SkipFirst)
    trainer = SimpleNamespace(loader=b, cfg=cfg, epoch=1, batch_in_epoch=3)
    rest = list(Trainer._loader(trainer))
    assert len(rest) == len(first) - 3 and all(same_paired(x, y) for x, y in zip(first[3:], rest))


def test_paired_loader_with_workers_gives_the_same_batches(data):
    out, _, tok, cfg = data
    plain = epoch_batches(paired_loader_from_config(cfg, out, tok), 0)
    workers = paired_loader_from_config(cfg, out, tok, num_workers=2)
    assert workers.num_workers == 2
    batches = epoch_batches(workers, 0)
    assert all(isinstance(p, PairedBatch) and p.xray.num_sequences == 2 for p in batches)
    assert all(same_paired(x, y) for x, y in zip(plain, batches)) and len(plain) == len(batches)


class ListSampler:
    """A stand-in study sampler: fixed batches, remembers its epoch."""

    def __init__(self, batches):
        self.batches, self.epoch = batches, None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_paired_sampler_ranks_share_the_global_volume_batch():
    n, V, W, offset = 10, 2, 2, 100
    studies = ListSampler([[k] for k in range(7)])
    ranks = [PairedBatchSampler(studies, n, V, 3, r, W, offset=offset) for r in range(W)]
    whole = PairedBatchSampler(studies, n, V * W, 3, offset=offset)
    for s in (*ranks, whole):
        s.set_epoch(2)
    assert studies.epoch == 2 and len(whole) == 7
    per_rank = [list(s) for s in ranks]
    for b, full in enumerate(whole):
        assert full[0] == b and all(i >= offset for i in full[1:])
        assert per_rank[0][b][1:] + per_rank[1][b][1:] == full[1:]  # rank r: the r-th share, in order
        assert len(set(full[1:])) == V * W
    unshuffled = PairedBatchSampler(studies, n, 4, offset=0, shuffle=False)
    assert [b[1:] for b in unshuffled][:3] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    with pytest.raises(ValueError, match="need 12 different volumes"):
        PairedBatchSampler(studies, n, 6, 0, 0, 2, offset=offset)


def test_paired_collator_needs_both_halves(data):
    out, _, tok, cfg = data
    loader = paired_loader_from_config(cfg, out, tok)
    ds = loader.dataset
    with pytest.raises(ValueError, match="studies and volumes"):
        loader.collate_fn([ds[0], ds[1]])
    with pytest.raises(ValueError, match="studies and volumes"):
        loader.collate_fn([ds[ds.offset]])


# ---------------------------------------------------------------------------------------------------------
# the Trainer's loader
# ---------------------------------------------------------------------------------------------------------
def test_the_trainer_loads_paired_batches_for_unimedi_only(data):
    out, _, tok, cfg = data
    paired = loader_for(cfg, out, tok)
    assert isinstance(paired.batch_sampler, PairedBatchSampler) and isinstance(next(iter(paired)), PairedBatch)
    medst = loader_for(cfg.override("model.method=medst"), out, tok)
    assert isinstance(medst.batch_sampler, SequenceBatchSampler)
    first = next(iter(medst))
    assert isinstance(first, Batch) and first.study_ids == next(iter(paired)).xray.study_ids


def test_trainer_from_config_with_unimedi(data, tmp_path):
    pytest.importorskip("medst.neighbours.unimedi")  # the UniMedI model (chapter 11)
    out, _, tok, cfg = data
    trainer = Trainer.from_config(cfg, out, tmp_path / "run", device="cpu", progress=False, tokenizer=tok)
    assert isinstance(trainer.loader.batch_sampler, PairedBatchSampler)
    batch = next(trainer.batches())
    assert isinstance(batch, PairedBatch) and batch.ct.size == VOLUMES_PER_BATCH

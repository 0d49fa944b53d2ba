"""Writing the phantom in the real formats: typed rows to CSV, RSNA DICOM files, COVIDx lists.

:func:`write_tables` writes every table of the data set, each sorted as the real one is (or by its ids),
under ``out``::

    mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv, mimic-cxr-2.0.0-split.csv
    ground_truth/{studies,progression,boxes,sequences}.csv
    ms-cxr-t/MS_CXR_T_temporal_image_classification_v1.0.0.csv, MS_CXR_T_temporal_sentence_similarity_v1.0.0.csv
    rsna/stage_2_train_labels.csv
    covidx/{train,test}.txt
    mimic-cxr-jpg/ct/ct-metadata.csv, ground_truth/ct_slices.csv   (only when there are CT volumes)

:func:`write_dicom` writes one RSNA image as a DICOM radiograph in one of several valid encodings;
:func:`write_nifti` one CT volume as a gzipped NIfTI-1 file.
"""

from __future__ import annotations

import csv
import gzip
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from medst.phantom.reports import SentencePair
from medst.phantom.rows import (
    BoxRow,
    CtMetadataRow,
    CtSliceRow,
    CtTables,
    MetadataRow,
    MscxrtRow,
    ProgressionRow,
    RsnaRow,
    SentencePairRow,
    SequenceRow,
    SplitRow,
    StudyRow,
    Tables,
)

MIMIC_DIR = "mimic-cxr-jpg"
CT_DIR = "ct"  # CT volumes, under MIMIC_DIR: files/pXX/pSUBJECT/sSTUDY.nii.gz and CT_METADATA_NAME
CT_METADATA_NAME = "ct-metadata.csv"
SENTENCE_SUBSET = "RadGraph"


def write_rows(path: Path, row_type: type, rows: Iterable[tuple]) -> None:
    """Write ``rows``, instances of the NamedTuple ``row_type``, as a CSV file (``\\n`` line ends) whose header
    is the type's field names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(row_type._fields)
        w.writerows(rows)


def write_tables(out: Path, tables: Tables, pairs: Sequence[SentencePair], ct: CtTables | None = None) -> None:
    """Write every table of the data set under ``out`` (rows in any order: each table is sorted here); the CT
    tables only when ``ct`` has rows."""
    mimic = out / MIMIC_DIR
    write_rows(
        mimic / "mimic-cxr-2.0.0-metadata.csv",
        MetadataRow,
        sorted(tables.metadata, key=lambda r: (r.subject_id, r.study_id, r.dicom_id)),
    )
    write_rows(
        mimic / "mimic-cxr-2.0.0-split.csv",
        SplitRow,
        sorted(tables.split, key=lambda r: (r.subject_id, r.study_id, r.dicom_id)),
    )
    gt = out / "ground_truth"
    write_rows(gt / "studies.csv", StudyRow, sorted(tables.studies, key=lambda r: (r.subject_id, r.study_index)))
    write_rows(gt / "progression.csv", ProgressionRow, sorted(tables.progression))
    write_rows(gt / "boxes.csv", BoxRow, sorted(tables.boxes))
    write_rows(
        gt / "sequences.csv", SequenceRow, sorted(tables.sequences, key=lambda r: (r.subject_id, r.sequence_index))
    )
    write_rows(
        out / "ms-cxr-t" / "MS_CXR_T_temporal_image_classification_v1.0.0.csv",
        MscxrtRow,
        sorted(tables.mscxrt, key=lambda r: (r.subject_id, r.study_id)),
    )
    write_rows(
        out / "ms-cxr-t" / "MS_CXR_T_temporal_sentence_similarity_v1.0.0.csv",
        SentencePairRow,
        [SentencePairRow(**p._asdict(), subset_name=SENTENCE_SUBSET) for p in pairs],
    )
    write_rows(out / "rsna" / "stage_2_train_labels.csv", RsnaRow, sorted(tables.rsna))
    covidx = sorted(tables.covidx, key=lambda r: (r.split, r.patient_id))
    for split in ("train", "test"):
        lines = [f"{r.patient_id} {r.filename} {r.label} {r.source}\n" for r in covidx if r.split == split]
        (out / "covidx" / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    if ct is not None and ct.metadata:
        write_rows(mimic / CT_DIR / CT_METADATA_NAME, CtMetadataRow, sorted(ct.metadata))
        write_rows(gt / "ct_slices.csv", CtSliceRow, sorted(ct.slices))


class DicomEncoding(NamedTuple):
    """How a DICOM file stores its pixels."""

    photometric: str  # MONOCHROME1 (inverted) | MONOCHROME2
    bits: int  # BitsStored: 8, 12 or 16


def _uid(rng: np.random.Generator) -> str:
    return "2.25." + str(uuid.UUID(bytes=rng.bytes(16)).int)


def write_dicom(path: Path, pixels: np.ndarray, rng: np.random.Generator, patient_id: str, view: str) -> DicomEncoding:
    """Write an 8-bit display image [H, W] as a DICOM radiograph with a random but valid encoding:
    MONOCHROME2 or MONOCHROME1 (inverted values), 8, 12 or 16 stored bits, with Rescale and VOI window for
    more than 8 bits. Returns the :class:`DicomEncoding` chosen."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    mono1 = rng.random() < 0.3
    bits = int(rng.choice([8, 12, 16], p=[0.4, 0.35, 0.25]))
    u = pixels.astype(np.float64) / 255.0
    ds = Dataset()
    if bits == 8:
        stored = np.rint(255 * (1 - u if mono1 else u)).astype(np.uint8)
    else:
        top = 2**bits - 1
        stored = np.rint(top * (0.05 + 0.9 * (1 - u if mono1 else u))).astype(np.uint16)
        slope, intercept = float(rng.choice([1.0, 0.5])), float(rng.choice([0.0, -1024.0]))
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
        ds.WindowCenter = f"{top * 0.5 * slope + intercept:g}"
        ds.WindowWidth = f"{top * 0.9 * slope:g}"
    sop_class = "1.2.840.10008.5.1.4.1.1.1" if rng.random() < 0.6 else "1.2.840.10008.5.1.4.1.1.1.1"
    sop_uid = _uid(rng)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(rng), _uid(rng)
    ds.Modality = "CR" if sop_class.endswith(".1.1") else "DX"
    ds.PatientID = ds.PatientName = patient_id
    ds.PatientSex = "F" if rng.random() < 0.45 else "M"
    ds.PatientAge = f"{int(rng.integers(18, 90)):03d}Y"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", view
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "19010101", "000000.00", "1", "1"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = ["0.168", "0.168"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (8 if bits == 8 else 16), bits, bits - 1, 0
    ds.PixelData = stored.tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(path, ds, enforce_file_format=True, little_endian=True, implicit_vr=False)
    else:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return DicomEncoding(ds.PhotometricInterpretation, bits)


def write_nifti(path: Path, hu: np.ndarray, affine: np.ndarray, description: str) -> None:
    """Write an int16 HU volume [I, J, K] with its [4, 4] RAS+ affine (mm) as a ``.nii.gz`` file: NIfTI-1, units
    mm, qform and sform "scanner"; the stored values are HU (no scl_slope / scl_inter scaling). The gzip stream
    has no time stamp and no name, so the same volume gives the same bytes."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(hu, dtype=np.int16), affine)
    img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = description.encode("ascii")[:79]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))

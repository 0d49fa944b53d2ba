"""read_dicom against hand-computed values from the DICOM standard's formulas (PS3.3 C.11.1, C.11.2)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medst.data.dicom import DicomReadError, read_dicom, read_dicom_uint8


def write_dicom(
    path: Path, pixels: np.ndarray, bits_stored: int, photometric: str = "MONOCHROME2", **attributes
) -> Path:
    """A minimal single-frame grey DICOM file (explicit VR little endian) with ``pixels`` as stored values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(np.issubdtype(pixels.dtype, np.signedinteger))
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pragma: no cover - pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def linear_window(x: float, center: float, width: float) -> float:
    """PS3.3 C.11.2.1.2.1 (LINEAR), output scaled to [0, 1]."""
    if x <= center - 0.5 - (width - 1) / 2:
        return 0.0
    if x > center - 0.5 + (width - 1) / 2:
        return 1.0
    return (x - (center - 0.5)) / (width - 1) + 0.5


def test_8bit_monochrome2_and_monochrome1(tmp_path):
    pixels = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    m2 = read_dicom(write_dicom(tmp_path / "m2.dcm", pixels, 8))
    assert m2.dtype == np.float32 and m2.shape == (2, 2)
    np.testing.assert_allclose(m2, [[0.0, 0.2], [0.8, 1.0]], atol=1e-6)
    m1 = read_dicom(write_dicom(tmp_path / "m1.dcm", pixels, 8, "MONOCHROME1"))
    np.testing.assert_allclose(m1, [[1.0, 0.8], [0.2, 0.0]], atol=1e-6)  # inverted: 1 is always white
    np.testing.assert_array_equal(read_dicom_uint8(tmp_path / "m2.dcm"), pixels)


def test_12bit_rescale_without_window(tmp_path):
    # stored v -> modality 2v - 100; output range [2*0 - 100, 2*4095 - 100] -> (2v)/(8190) = v / 4095
    pixels = np.array([[0, 1000, 4095]], dtype=np.uint16)
    out = read_dicom(write_dicom(tmp_path / "r.dcm", pixels, 12, RescaleSlope=2, RescaleIntercept=-100))
    np.testing.assert_allclose(out, [[0.0, 1000 / 4095, 1.0]], atol=1e-6)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_12bit_rescale_with_linear_window(tmp_path, photometric):
    stored = np.array([[0, 50, 300, 600, 1100, 4095]], dtype=np.uint16)
    center, width = 1000.0, 2001.0  # in modality units (after rescale)
    path = write_dicom(
        tmp_path / "w.dcm",
        stored,
        12,
        photometric,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=center,
        WindowWidth=width,
    )
    expected = np.array([[linear_window(2 * int(v) - 100, center, width) for v in stored[0]]])
    # by hand: x = -100, 0, 500, 1100, 2100, 8090
    np.testing.assert_allclose(expected, [[0.0, 0.00025, 0.25025, 0.55025, 1.0, 1.0]], atol=1e-9)
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    np.testing.assert_allclose(read_dicom(path), expected, atol=1e-6)


def test_sigmoid_window(tmp_path):
    stored = np.array([[100, 200, 300]], dtype=np.uint16)
    path = write_dicom(tmp_path / "s.dcm", stored, 10, WindowCenter=200, WindowWidth=100, VOILUTFunction="SIGMOID")
    expected = [1 / (1 + math.exp(-4 * (v - 200) / 100)) for v in stored[0].tolist()]  # PS3.3 C.11.2.1.3.1
    np.testing.assert_allclose(read_dicom(path), [expected], atol=1e-6)


def test_voi_lut_sequence_wins_over_window(tmp_path):
    n, first = 512, 100
    lut = [round(4000 * math.sqrt(k / (n - 1))) + 50 for k in range(n)]  # values 50 .. 4050
    item = Dataset()
    item.add_new(0x00283002, "US", [n, first, 16])  # LUT Descriptor: entries, first mapped value, bits
    item.add_new(0x00283006, "US", lut)  # LUT Data
    stored = np.array([[0, 100, 355, 611, 1023]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "lut.dcm", stored, 10, VOILUTSequence=Sequence([item]), WindowCenter=500, WindowWidth=100
    )
    index = np.clip(stored[0].astype(int) - first, 0, n - 1)  # below/above the LUT: first/last entry
    expected = [(lut[i] - 50) / 4000 for i in index]
    assert index.tolist() == [0, 0, 255, 511, 511]
    np.testing.assert_allclose(read_dicom(path), [expected], atol=1e-6)


def test_signed_16bit(tmp_path):
    stored = np.array([[-32768, 0, 32767]], dtype=np.int16)
    out = read_dicom(write_dicom(tmp_path / "signed.dcm", stored, 16))
    np.testing.assert_allclose(out, [[0.0, 32768 / 65535, 1.0]], atol=1e-6)


def test_errors_name_the_file(tmp_path):
    good = write_dicom(tmp_path / "good.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096, 12)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 3000])  # cut inside the pixel data
    header_only = tmp_path / "header_only.dcm"
    header_only.write_bytes(data[:200])  # cut inside the header
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 50 + b"not dicom at all")
    no_pixels = tmp_path / "no_pixels.dcm"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = "x"
    try:
        ds.save_as(no_pixels, enforce_file_format=True)
    except TypeError:  # pragma: no cover - pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(no_pixels, write_like_original=False)
    for path in (truncated, header_only, garbage, no_pixels, tmp_path / "missing.dcm"):
        with pytest.raises(DicomReadError) as err:
            read_dicom(path)
        assert str(path) in str(err.value), err.value
        assert err.value.path == str(path)
    assert read_dicom(good).shape == (64, 64)

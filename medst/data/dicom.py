"""Reading DICOM radiographs (RSNA pneumonia, real MIMIC-CXR DICOMs) into display-ready grey levels.

The pixel pipeline of the DICOM standard (PS3.3 C.11), done with pydicom's own functions:

1. stored values -> *modality* values: Modality LUT Sequence or Rescale Slope/Intercept;
2. modality values -> *display* values: VOI LUT Sequence, else Window Center/Width (LINEAR, LINEAR_EXACT,
   SIGMOID), else nothing;
3. scale to [0, 1] by the output range of the last step (not by the image's own min/max, so the same grey
   means the same value in every file);
4. MONOCHROME1 (white = 0) is inverted so that 1 is always white, as in MONOCHROME2.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut


class DicomReadError(OSError):
    """A DICOM file that is missing, not DICOM, truncated or has pixel data this reader cannot use."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


def _stored_range(ds: pydicom.Dataset) -> tuple[int, int]:
    """Smallest and largest value Bits Stored / Pixel Representation allow."""
    bits = int(ds.BitsStored)
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _has_voi_lut(ds: pydicom.Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def _has_window(ds: pydicom.Dataset) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The range of values steps 1-2 can produce, found by sending probe values through the same functions."""
    lo, hi = _stored_range(ds)
    if hi - lo <= 2**16:
        stored = np.arange(lo, hi + 1, dtype=np.int64)
    else:
        stored = np.array([lo, hi], dtype=np.int64)
    modality = apply_modality_lut(stored, ds)
    if _has_voi_lut(ds):
        item = ds.VOILUTSequence[0]
        n, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
        probe = apply_voi_lut(np.arange(first, first + n, dtype=np.int64), ds)  # every LUT entry
    elif _has_window(ds):
        m_lo, m_hi = float(np.min(modality)), float(np.max(modality))
        span = max(m_hi - m_lo, 1.0)
        # Far outside every window: LINEAR clips, SIGMOID saturates, to the window's output range.
        with np.errstate(over="ignore"):
            probe = apply_voi_lut(np.array([m_lo - 1e6 * span, m_hi + 1e6 * span], dtype=np.float64), ds)
    else:
        probe = modality
    return float(np.min(probe)), float(np.max(probe))


def dicom_to_float(ds: pydicom.Dataset, path: str | os.PathLike = "<dataset>") -> np.ndarray:
    """A read pydicom dataset -> float32 [H, W] in [0, 1] (steps 1-4 above); the first frame of a multi-frame."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomReadError(path, f"photometric interpretation {photometric} is not a grey-level radiograph")
    for tag in ("BitsStored", "Rows", "Columns"):
        if tag not in ds:
            raise DicomReadError(path, f"missing required attribute {tag}")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for truncated/unsupported pixel data
        raise DicomReadError(path, f"cannot decode pixel data ({type(exc).__name__}: {exc})") from None
    if stored.ndim == 3:  # multi-frame: [frames, H, W]
        stored = stored[0]
    if stored.ndim != 2:
        raise DicomReadError(path, f"expected a 2-D grey image, got pixel array of shape {stored.shape}")

    try:
        values = apply_modality_lut(stored, ds)
        if _has_voi_lut(ds):
            # A LUT is indexed by integers; rescaled values of an integer image are integral.
            values = apply_voi_lut(np.rint(values).astype(np.int64), ds)
        elif _has_window(ds):
            values = apply_voi_lut(values, ds)
        lo, hi = _output_range(ds)
    except DicomReadError:
        raise
    except Exception as exc:
        raise DicomReadError(path, f"invalid modality/VOI LUT attributes ({type(exc).__name__}: {exc})") from None
    if hi <= lo:
        raise DicomReadError(path, f"empty output range [{lo}, {hi}] after modality/VOI LUT")
    out = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)
    out = np.clip(out, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Read a DICOM file -> float32 [H, W] in [0, 1], 1 = white (see the module docstring for the steps).

    Raises :class:`DicomReadError` naming the file when it is missing, is not DICOM, is truncated, or its
    pixel data cannot be decoded (e.g. a compressed transfer syntax without the decoder installed).
    """
    path = Path(path)
    if not path.is_file():
        raise DicomReadError(path, "file not found")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise DicomReadError(path, f"not a DICOM file ({exc})") from None
    except Exception as exc:
        raise DicomReadError(path, f"cannot parse DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        raise DicomReadError(path, "no pixel data (truncated file or not an image)")
    return dicom_to_float(ds, path)


def read_dicom_uint8(path: str | os.PathLike) -> np.ndarray:
    """:func:`read_dicom` as uint8 [H, W] (0-255), the input the image transforms take."""
    return np.round(read_dicom(path) * 255.0).astype(np.uint8)

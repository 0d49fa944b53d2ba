"""Data (Method §1): real-format preparation (MIMIC-CXR-JPG, DICOM), report text, images, and Med-ST batches.

Names are imported lazily, so ``import medst.data.reports`` (or the images helpers) does not pull in torch. The
phantom generator is the package ``medst.phantom``; the downstream benchmark readers live in their own modules.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "dataset": ("Batch", "Collator", "StudyDataset", "make_loader"),
    "dicom": ("DicomReadError", "read_dicom", "read_dicom_uint8"),
    "images": ("ImageReadError", "cache_side", "read_image", "resize_pad"),
    "mimic": ("PrepareSummary", "prepare", "sliding_windows"),
    "reports": ("extract_sections", "report_text", "word_tokens"),
    "sampler": ("SequenceBatchSampler", "SequenceIndex"),
    "transforms": ("ImageTransform", "eval_transform", "normalise", "train_transform"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'medst.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medst.data.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

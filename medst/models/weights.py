"""A model's weights as safetensors: the final weights of a run (``RUN/model.safetensors``), read back by
:func:`medst.models.medst.load_run` (Method §7).

safetensors holds tensors only (no pickled code runs on loading) and can be memory-mapped. Files are written to a
temporary name and renamed into place (:func:`medst.utils.atomic_write`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from medst.utils import atomic_write


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Final weights as safetensors (tied tensors handled by ``safetensors.torch.save_model``)."""
    atomic_write(Path(path), lambda tmp: save_model(model, str(tmp), metadata=metadata))


def load_weights(model: torch.nn.Module, path: Path, strict: bool = True) -> torch.nn.Module:
    """Load a safetensors file written by :func:`save_weights` into ``model`` (in place); returns ``model``."""
    load_model(model, str(path), strict=strict)
    return model

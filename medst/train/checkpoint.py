"""Checkpoints that are written atomically and load without executing pickled code.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, lists and dicts, so that
``torch.load(..., weights_only=True)`` reads it. It carries the model, optimizer and scheduler states, every
random number generator's state, the data position (epoch and batch within it) and the run's configuration.
Files are written to a temporary name and renamed into place (``os.replace``), so a run killed at any moment
leaves either the previous checkpoint or the new one, never half a file. ``latest`` names the newest.

Final weights go to ``RUN/model.safetensors`` (safetensors: no code, memory-mappable; :mod:`medst.models.weights`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medst.config import flatten, normalized
from medst.utils import atomic_write

# Config keys that may differ between a checkpoint and the run resuming it.
RESUMABLE_KEYS = {
    "name",
    "train.steps",
    "train.checkpoint_every",
    "train.log_every",
    "data.num_workers",
    "train.group_bucket",
}  # padding the view groups changes no result


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states, as plain tensors and lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), None))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_differences(
    saved: dict[str, Any],
    current: dict[str, Any],
    ignored: set[str] = RESUMABLE_KEYS,
    labels: tuple[str, str] = ("checkpoint has", "this run has"),
) -> list[str]:
    """Keys whose values differ between two config dicts (ignoring ``ignored``, by default :data:`RESUMABLE_KEYS`),
    each as ``"key: {labels[0]} saved, {labels[1]} current"``.

    A key the saved config lacks (written before the key existed) counts as its default value
    (:func:`medst.config.normalized`)."""
    a, b = flatten(normalized(saved)), flatten(current)
    return [
        f"{k}: {labels[0]} {a.get(k)!r}, {labels[1]} {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k not in ignored and a.get(k) != b.get(k)
    ]


def run_differences(run_dir: Path, config: dict[str, Any]) -> list[str]:
    """How a finished run (its ``config.json``) differs from ``config`` in what it learns; empty: the same run.

    Every key counts, ``train.steps`` included, except the bookkeeping of :data:`RESUMABLE_KEYS`; the temporal
    term's schedule (``loss.temporal_start``, ``loss.temporal_ramp``) counts only where ``config`` trains that term
    (Med-ST with λ3 > 0 and FMC or RMR on). The book's runs (:meth:`medst.book.chapter.Chapter.variant_run`) and
    the benchmarks that reuse finished runs (:func:`medst.ablation.runs.reusable_run`) train again where this is
    not empty. A folder without ``config.json`` differs in everything."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return [f"{path} is missing"]
    cfg = normalized(config)
    loss = cfg["loss"]
    ignored = RESUMABLE_KEYS - {"train.steps"}
    temporal = cfg["model"]["method"] == "medst" and loss["temporal_weight"] > 0 and (loss["fmc"] or loss["rmr"])
    if not temporal:  # no temporal term trained (MPMA and UniMedI have none)
        ignored = ignored | {"loss.temporal_start", "loss.temporal_ramp"}
    return config_differences(json.loads(path.read_text()), cfg, ignored, ("the run has", "now"))


def finished_run(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds finished weights (``model.safetensors``) of a run of ``config``
    (:func:`run_differences` finds no difference)."""
    return (Path(run_dir) / "model.safetensors").exists() and not run_differences(run_dir, config)


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``checkpoints/step_XXXXXXX.pt`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    folder = Path(run_dir) / "checkpoints"
    path = folder / f"step_{step:07d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    atomic_write(folder / "latest", lambda tmp: Path(tmp).write_text(path.name))
    for old in sorted(folder.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.exists() else None


def load_checkpoint(path: Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; refuse one written with a different configuration."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - name the file whatever went wrong
        raise RuntimeError(f"cannot read checkpoint {path}: {err}") from err
    if config is not None:
        diff = config_differences(json.loads(state["config"]), config)
        if diff:
            raise ValueError(
                f"checkpoint {path} was written with a different configuration and cannot be resumed:\n  "
                + "\n  ".join(diff)
            )
    return state

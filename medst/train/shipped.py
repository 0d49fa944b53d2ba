"""Book models shipped with the repository: trained once, committed with their command, checked on load.

The ``cpu`` book model needs more steps than a reader's laptop runs in a few minutes before its global
alignment leaves the plateau near 2 log B (``benchmarks/RESULTS.md``). So the run that chapter 7 would train is
committed under ``book/models/book-{profile}/``: its ``model.safetensors``, ``config.json``, ``tokenizer/``,
``metrics.csv`` and last checkpoint, plus ``MANIFEST.json`` holding the exact command that produced it, the
machine, and the sha256 of every file. :meth:`medst.book.chapter.Chapter.book_model` copies it into the chapter's
run folder after checking every hash, and trains from scratch instead when asked (``retrain=True``), when the
profile's configuration differs from the committed one, or when the repository's ``book/`` folder is not there
(an installed package).

Write a manifest after a run with::

    python -m medst.train.shipped RUN book/models/book-cpu --command "medst pretrain ..."
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
from pathlib import Path

import torch

from medst.train.checkpoint import latest_checkpoint

MANIFEST = "MANIFEST.json"
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "book" / "models"
# What a run folder holds that a reader needs; older checkpoints and tensorboard logs are left out.
RUN_FILES = ("model.safetensors", "config.json", "metrics.csv", "tokenizer")


class ShippedModelError(RuntimeError):
    """A committed model whose files do not match its manifest."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_model(profile: str, root: Path | None = None) -> Path | None:
    """The committed book model of ``profile`` (a folder with a manifest), or None."""
    folder = (root or SHIPPED_DIR) / f"book-{profile}"
    return folder if (folder / MANIFEST).exists() else None


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def package(run: Path, dest: Path, command: str, note: str = "") -> dict:
    """Copy what a reader needs from the finished ``run`` into ``dest`` (the last checkpoint included, so a
    resume works) and write ``dest/MANIFEST.json``: the command, the machine, and every file's sha256."""
    run, dest = Path(run), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in RUN_FILES:
        src = run / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        elif src.exists():
            shutil.copy2(src, dest / name)
        else:
            raise FileNotFoundError(f"{src}: a finished run holds this; is the run complete?")
    last = latest_checkpoint(run)
    (dest / "checkpoints").mkdir()
    shutil.copy2(last, dest / "checkpoints" / last.name)
    (dest / "checkpoints" / "latest").write_text(last.name)
    manifest = {
        "command": command,
        "note": note,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "sha256": {str(p.relative_to(dest)): sha256(p) for p in _files(dest)},
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify(folder: Path) -> dict:
    """Check every file listed in ``folder/MANIFEST.json`` against its sha256; return the manifest.

    Raises :class:`ShippedModelError` naming each missing or changed file."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    problems = []
    for rel, want in manifest["sha256"].items():
        path = folder / rel
        if not path.exists():
            problems.append(f"{path}: missing")
        elif sha256(path) != want:
            problems.append(f"{path}: sha256 differs from the manifest's {want[:12]}...")
    if problems:
        raise ShippedModelError(
            "the committed book model does not match its manifest:\n  "
            + "\n  ".join(problems)
            + f"\nRestore the folder from the repository, or retrain (the command is in {folder / MANIFEST})."
        )
    return manifest


def install(folder: Path, run: Path) -> Path:
    """Verify the committed model in ``folder`` and copy it, manifest included, into the run folder ``run``."""
    verify(folder)
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    for path in _files(Path(folder)) + [Path(folder) / MANIFEST]:
        target = run / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Package a finished run as a committed book model.")
    parser.add_argument("run", help="the finished run folder")
    parser.add_argument("dest", help="e.g. book/models/book-cpu")
    parser.add_argument("--command", required=True, help="the exact command that produced the run")
    parser.add_argument("--note", default="", help="e.g. the wall time and thread count")
    args = parser.parse_args(argv)
    manifest = package(Path(args.run), Path(args.dest), args.command, args.note)
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()

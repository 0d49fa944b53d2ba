"""The image cache of ``medst prepare`` (Method §1) and the parallel decoding that fills it.

``images_{S}.npy`` is a plain ``.npy`` file, uint8 ``[n_images, S, S]``: every image a prepared index uses,
resized so its long side is S and zero-padded to a square (:func:`medst.data.images.resize_pad`), one row
per image in decoding order. :class:`CacheWriter` appends rows to a memory-mapped file of the largest size
needed and trims it at the end; :func:`decode_for_cache` is the work done per image (in worker processes by
:func:`parallel_map`).
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medst.data.images import ImageReadError, read_image, resize_pad

# Reasons an image is unreadable, as written in skipped.csv and counted in the summary.
MISSING_FILE = "missing file"
CORRUPT_IMAGE = "corrupt image"
CHECK_SIDE = 64  # decode size when an image is only checked (no cache): a JPEG decodes at a reduced scale


def default_workers() -> int:
    """The available cores, at most 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def parallel_map(
    fn: Callable[[Any], Any], items: list[Any], workers: int, desc: str, progress: bool, unit: str
) -> Iterator[Any]:
    """``map(fn, items)`` in order, with ``workers`` processes (in this process for 1 or few items) and a
    progress bar. Consume the generator to its end: that closes the pool and the bar."""
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1 or len(items) < 4 * workers:
            for item in items:
                yield fn(item)
                bar.update()
            return
        chunk = max(1, min(64, len(items) // (8 * workers)))
        with multiprocessing.get_context().Pool(workers) as pool:
            for result in pool.imap(fn, items, chunksize=chunk):
                yield result
                bar.update()
    finally:
        bar.close()


def decode_for_cache(task: tuple[str, int]) -> tuple[np.ndarray | None, str, str]:
    """One image for the cache: ``(path, side)`` -> (uint8 [side, side] or None, problem reason, detail).

    The reason is "" for a readable image, else :data:`MISSING_FILE` or :data:`CORRUPT_IMAGE`. ``side`` 0 only
    checks that the file decodes completely (the array is then None).
    """
    path, side = task
    try:
        img = read_image(path, reduce_to=side if side > 0 else CHECK_SIDE)
    except ImageReadError as exc:
        return None, (MISSING_FILE if exc.missing else CORRUPT_IMAGE), exc.reason
    return (resize_pad(img, side) if side > 0 else None), "", ""


class CacheWriter:
    """Appends uint8 [side, side] images to ``images_{side}.npy`` in order; trims the unused capacity at the end.

    The rows go to ``images_{side}.npy.partial`` (memory-mapped, ``capacity`` rows) until :meth:`close`
    renames it, so an interrupted run never leaves a cache that looks complete.
    """

    def __init__(self, path: Path, capacity: int, side: int):
        self.path, self.side, self.count = path, side, 0
        self.partial = path.with_name(path.name + ".partial")
        self.array = np.lib.format.open_memmap(
            self.partial, mode="w+", dtype=np.uint8, shape=(max(capacity, 1), side, side)
        )
        self.offset = self.array.offset

    def append(self, img: np.ndarray) -> int:
        """Write one uint8 [side, side] image; returns its row."""
        self.array[self.count] = img
        self.count += 1
        return self.count - 1

    def abort(self) -> None:
        """Remove the partial file (an interrupted run must not leave a cache that looks complete)."""
        del self.array
        self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        """Write the final shape into the header, cut the unused rows and move the file into place."""
        self.array.flush()
        del self.array
        header = _npy_header((self.count, self.side, self.side))
        if len(header) == self.offset:  # rewrite the header in place and cut the unused tail
            with open(self.partial, "r+b") as f:
                f.write(header)
                f.truncate(self.offset + self.count * self.side * self.side)
        else:  # pragma: no cover - header length changed (never for realistic counts): copy
            src = np.load(self.partial, mmap_mode="r")[: self.count]
            np.save(self.path.with_name(self.path.name + ".tmp.npy"), src)
            del src
            os.replace(self.path.with_name(self.path.name + ".tmp.npy"), self.partial)
        os.replace(self.partial, self.path)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (version 1.0) header of a C-ordered uint8 array of ``shape``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()

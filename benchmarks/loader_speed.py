"""Data loader speed: images per second with the prepared resize-and-pad cache vs decoding the JPEGs.

    python benchmarks/loader_speed.py                                   # phantom, 200 patients at 512 px
    python benchmarks/loader_speed.py --mimic-root /data/mimic-cxr-jpg  # a real MIMIC-CXR-JPG root
    python benchmarks/loader_speed.py --prepared runs/prepared           # an existing `medst prepare` folder

Prints one JSON object: machine, settings, the time ``prepare`` took, and for each (cache, workers) pair the
loader's throughput in images (frontal + lateral) and studies per second after one warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medst.config import Config  # noqa: E402
from medst.data.dataset import loader_from_config  # noqa: E402
from medst.data.images import cache_side  # noqa: E402
from medst.data.mimic import prepare  # noqa: E402
from medst.models.text import train_wordpiece_tokenizer  # noqa: E402
from medst.phantom import synthesize  # noqa: E402


def tokenizer_for(prepared: Path):
    texts = pd.read_csv(prepared / "studies.csv", keep_default_na=False)["text"].tolist()
    return train_wordpiece_tokenizer(texts, vocab_size=1000)


def loader_config(args) -> Config:
    """The default configuration at the command line's batch shape and image size."""
    return Config().override(
        f"data.image_size={args.image_size}",
        f"data.max_length={args.max_length}",
        f"train.sequences_per_batch={args.sequences}",
        f"train.singles_per_batch={args.singles}",
    )


def time_loader(prepared: Path, tokenizer, *, use_cache: bool, workers: int, args) -> dict:
    loader = loader_from_config(
        loader_config(args),
        prepared,
        tokenizer,
        split="train",
        train=True,
        num_workers=workers,
        use_cache=use_cache,
        drop_last=False,
    )
    it = iter(loader)
    next(it)  # warm-up: worker start, first page faults
    images = studies = batches = 0
    start = time.perf_counter()
    for batch in it:
        images += batch.size + batch.lateral.shape[0]
        studies += batch.size
        batches += 1
        if batches >= args.batches:
            break
    seconds = time.perf_counter() - start
    del it, loader
    return {
        "cache": use_cache,
        "workers": workers,
        "batches": batches,
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1) if seconds else None,
        "studies_per_s": round(studies / seconds, 1) if seconds else None,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mimic-root", type=Path, default=None, help="MIMIC-CXR-JPG root (default: make a phantom)")
    p.add_argument("--prepared", type=Path, default=None, help="an existing prepared folder (skips prepare)")
    p.add_argument("--patients", type=int, default=200, help="phantom patients")
    p.add_argument("--phantom-size", type=int, default=512, help="phantom image side (real MIMIC: ~2500-3000)")
    p.add_argument("--image-size", type=int, default=224, help="crop size (the cache side is 256/224 of it)")
    p.add_argument("--sequences", type=int, default=4, help="sequences per batch")
    p.add_argument("--singles", type=int, default=8, help="single studies per batch")
    p.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    p.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    p.add_argument("--max-length", type=int, default=112)
    p.add_argument("--work-dir", type=Path, default=None, help="where the phantom and index go (default: temp)")
    args = p.parse_args(argv)

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="medst-loader-bench-"))
    report: dict = {
        "benchmark": "loader_speed",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    prepared = args.prepared
    if prepared is None:
        root = args.mimic_root
        if root is None:
            t = time.perf_counter()
            synthesize(work / "phantom", n_patients=args.patients, image_size=args.phantom_size, seed=0, progress=False)
            report["synthesize_s"] = round(time.perf_counter() - t, 2)
            root = work / "phantom" / "mimic-cxr-jpg"
        prepared = work / "prepared"
        t = time.perf_counter()
        summary = prepare(root, prepared, cache_size=cache_side(args.image_size), progress=False)
        report["prepare_s"] = round(time.perf_counter() - t, 2)
        report["prepared"] = {
            "studies": summary.studies_usable,
            "images": summary.images_used,
            "sequences": summary.sequences_per_split,
        }
    tokenizer = tokenizer_for(prepared)
    results = []
    for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
        for use_cache in (True, False):
            results.append(time_loader(prepared, tokenizer, use_cache=use_cache, workers=workers, args=args))
    report["results"] = results
    by = {(r["cache"], r["workers"]): r["images_per_s"] for r in results}
    report["cache_speedup"] = {
        str(w): round(by[(True, w)] / by[(False, w)], 2) for (c, w) in by if c and by.get((False, w))
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

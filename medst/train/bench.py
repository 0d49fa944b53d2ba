"""``medst bench``: how fast a profile's model trains, how well it uses the GPU, and how fast data arrives.

Training steps run on synthetic batches of the profile's shapes (S sequences of L studies plus singles, half
of the studies with a lateral view), so the model's speed is measured apart from the disk. Reported:

- ``pairs_per_s`` and ``ms_per_step`` (pre-training's step, :func:`medst.train.step.train_step`: forward,
  backward, gradient clipping, optimiser step; median over timed steps),
- ``peak_memory_gb`` (``torch.cuda.max_memory_allocated``; the process's peak RSS on a CPU),
- ``mfu``: model FLOPs per step (PyTorch's FLOP counter over forward and backward) divided by the step time
  and the device's dense bf16 peak; ``null`` on a CPU or an unknown GPU,
- ``loader_images_per_s`` (with ``--data``): images the DataLoader delivers per second with the profile's
  workers and cache, and ``loader_to_model_ratio``, pairs delivered per pair consumed (≥ 1.5 is the target).
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from medst.config import Config, load_profile
from medst.data.dataset import Batch, loader_from_config
from medst.models.build import build_tokenizer
from medst.models.medst import build_model
from medst.models.text import train_wordpiece_tokenizer
from medst.train.step import AmpPolicy, optimizer_from_config, train_step
from medst.utils import resolve_device, seed_everything

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, most specific first.
BF16_PEAK = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("RTX 4090", 165e12),
]


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK if key in name), None)


def synthetic_tokenizer(vocab_size: int):
    """A WordPiece tokenizer trained on generated report-like text (no files, no downloads)."""
    words = [
        "effusion",
        "pleural",
        "consolidation",
        "edema",
        "pneumothorax",
        "cardiomegaly",
        "heart",
        "lung",
        "left",
        "right",
        "small",
        "moderate",
        "large",
        "increased",
        "decreased",
        "unchanged",
        "no",
        "with",
        "compared",
        "prior",
        "radiograph",
        "the",
        "is",
        "has",
        "there",
        "and",
        "of",
        "bilateral",
        "basilar",
    ]
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[i] for i in torch.randint(len(words), (40,), generator=g).tolist()) for _ in range(200)]
    return train_wordpiece_tokenizer(texts, vocab_size=min(vocab_size, 2000))


def synthetic_batch(cfg: Config, sequences: int, singles: int, tokenizer, device: torch.device):
    """A :class:`Batch` of the profile's shapes with random pixels and full-length random reports
    (ordinary tokens of ``tokenizer`` between its [CLS] and [SEP]); every other study has a lateral."""
    L, size, T = cfg.data.sequence_length, cfg.data.image_size, cfg.data.max_length
    B = sequences * L + singles
    has_lateral = torch.arange(B) % 2 == 0
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in set(special.tolist())])
    ids = ordinary[torch.randint(len(ordinary), (B, T))]
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    batch = Batch(
        frontal=torch.randn(B, 3, size, size),
        lateral=torch.randn(int(has_lateral.sum()), 3, size, size),
        has_lateral=has_lateral,
        input_ids=ids,
        attention_mask=torch.ones(B, T, dtype=torch.long),
        num_sequences=sequences,
        sequence_length=L,
        study_ids=list(range(B)),
        subject_ids=list(range(B)),
        texts=[""] * B,
    )
    return batch.to(device)


def bench_model(cfg: Config, device: torch.device, sequences: int, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Time ``steps`` training steps at ``sequences`` sequences per batch (singles scaled as in the profile).

    A step is pre-training's (:func:`~medst.train.step.train_step`: the profile's mixed precision, gradient
    clipping, AdamW) on one synthetic batch, without a schedule.
    """
    if cfg.model.method == "unimedi":
        raise ValueError(
            "medst bench times Med-ST batches of radiographs; a UniMedI step also reads CT volumes, which the "
            "synthetic batch does not have (time it with medst pretrain and the seconds column of metrics.csv)"
        )
    seed_everything(0)
    tokenizer = synthetic_tokenizer(cfg.model.text.vocab_size)
    model = build_model(cfg, tokenizer).to(device)
    model.vision.group_bucket = cfg.train.group_bucket  # as in training (medst.train.loop)
    ratio = cfg.train.singles_per_batch / max(cfg.train.sequences_per_batch, 1)
    batch = synthetic_batch(cfg, sequences, round(sequences * ratio), model.text.tokenizer, device)
    batch = batch.pad_laterals(cfg.train.group_bucket)
    opt = optimizer_from_config(model, cfg, device)
    forward = torch.compile(model, dynamic=False if cfg.train.group_bucket else None) if cfg.train.compile else model
    amp = AmpPolicy.from_config(cfg, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        train_step(model, batch, opt, amp=amp, clip=cfg.train.grad_clip, forward=forward)

    model.train()
    for _ in range(warmup):
        step()
    sync()
    with FlopCounterMode(display=False) as counter:  # forward + backward FLOPs of one step
        with amp.autocast():
            loss = model(batch).loss
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = device_peak_flops(device)
    memory = (
        torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "sequences_per_batch": sequences,
        "pairs_per_step": batch.size,
        "ms_per_step": round(seconds * 1e3, 2),
        "pairs_per_s": round(batch.size / seconds, 2),
        "flops_per_step": flops,
        "tflops_per_s": round(flops / seconds / 1e12, 3),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "peak_memory_gb": round(memory, 3),
    }


def bench_loader(cfg: Config, data_dir: Path, batches: int = 20) -> dict[str, Any]:
    """Images and pairs per second delivered by the training DataLoader (profile's workers and cache)."""
    tokenizer = build_tokenizer(cfg, data_dir)
    loader = loader_from_config(
        cfg, data_dir, tokenizer, split="train", train=True, lateral_bucket=cfg.train.group_bucket
    )
    it = iter(loader)
    next(it)  # start the workers
    images = pairs = n = 0
    start = time.perf_counter()
    for batch in it:
        images += batch.size + int(batch.has_lateral.sum())
        pairs += batch.size
        n += 1
        if n == batches:
            break
    seconds = time.perf_counter() - start
    return {
        "loader_images_per_s": round(images / seconds, 1),
        "loader_pairs_per_s": round(pairs / seconds, 1),
        "loader_batches": n,
    }


def bench(
    cfg: Config,
    device: str = "auto",
    batch_sizes: list[int] | None = None,
    steps: int = 10,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Benchmark each batch size, keep the fastest (pairs/s) that fits in memory, add the loader's speed."""
    dev = resolve_device(device)
    sizes = batch_sizes or [cfg.train.sequences_per_batch]
    runs = []
    for s in sizes:
        try:
            runs.append(bench_model(cfg, dev, s, steps=steps))
        except torch.cuda.OutOfMemoryError:
            runs.append({"sequences_per_batch": s, "error": "out of memory"})
            torch.cuda.empty_cache()
    ok = [r for r in runs if "error" not in r]
    if not ok:
        raise RuntimeError(f"no batch size fitted: {runs}")
    best = max(ok, key=lambda r: r["pairs_per_s"])
    result = {
        "profile": cfg.name,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "precision": cfg.train.precision,
        "compile": cfg.train.compile,
        "group_bucket": cfg.train.group_bucket,
        "threads": torch.get_num_threads(),
        **best,
        "tried": runs,
    }
    if data_dir is not None:
        result.update(bench_loader(cfg, Path(data_dir)))
        result["loader_to_model_ratio"] = round(result["loader_pairs_per_s"] / best["pairs_per_s"], 2)
    return result


def bench_main(args) -> None:
    cfg = load_profile(args.profile, args.overrides)
    sizes = [int(s) for s in args.batch_sizes.split(",")] if args.batch_sizes else None
    result = bench(cfg, args.device, sizes, steps=args.steps, data_dir=args.data)
    if not args.json:
        for key, value in result.items():
            if key != "tried":
                print(f"{key:>24}: {value}")
    print(json.dumps(result))

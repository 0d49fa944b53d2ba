"""Pre-training: the loop behind ``medst pretrain`` and chapter 7 (Method §7).

One step (:func:`medst.train.step.train_step`) = ``accumulation`` micro-batches, each a
:class:`~medst.data.dataset.Batch` of S sequences of L studies followed by single studies (for UniMedI, chapter 11,
a :class:`~medst.data.volumes.PairedBatch`: such a batch plus CT volumes; :func:`loader_for`); AdamW with a cosine
schedule after a linear warm-up (transformers' scheduler); bf16 autocast with ``train.precision=bf16``
(:class:`~medst.train.step.AmpPolicy`); gradient clipping; a guard that stops on a non-finite loss and keeps the
last good checkpoint. Several processes come from ``torchrun`` (DDP; NCCL on GPUs, gloo on CPUs): each keeps
whole sequences, the global loss sees every process's negatives, and the heads' BatchNorm statistics are
taken over the global batch.

:class:`Trainer` is handed its model and loader; :meth:`Trainer.from_config` builds both from a profile and a
prepared folder (:func:`pretrain`, the command line and the chapters use it).

The host never waits for the device between log steps: a step's loss, terms and gradient norm stay on the
device, and :meth:`Trainer.flush` reads all pending steps at once at each log step and before each checkpoint.
The non-finite guard is checked there, so a bad step is reported at the next log step (or checkpoint, which
therefore never holds the weights of a non-finite step); the steps in between are lost anyway.
``train.group_bucket`` pads MoVE's two view groups to a few fixed sizes (static shapes for ``torch.compile``;
see :mod:`medst.models.vision`). On GPUs the optimiser is the fused AdamW, batches come from pinned memory with
prefetching workers and move to the device without blocking.

Run folder: ``config.json``, ``tokenizer/``, ``metrics.csv``, ``checkpoints/``, ``model.safetensors``.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from medst.config import Config, load_profile
from medst.data.dataset import loader_from_config
from medst.data.volumes import paired_loader_from_config
from medst.models.build import build_tokenizer
from medst.models.medst import build_model
from medst.models.norm import convert_batchnorm
from medst.models.weights import save_weights
from medst.train import distributed
from medst.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from medst.train.step import AmpPolicy, NonFiniteLoss, check_finite, optimizer_from_config, train_step
from medst.utils import is_distributed, resolve_device, seed_everything

METRIC_FIELDS = [
    "step",
    "epoch",
    "loss",
    "global",
    "local",
    "temporal",
    "fmc",
    "rmr",
    "lr",
    "grad_norm",
    "pairs_per_s",
    "seconds",
    "local_word",
    "local_patch",
    "word_max_weight",
    "word_entropy",
    "patch_max_weight",
    "patch_entropy",
    "mim",  # MPMA's reconstruction terms (chapter 10); empty for Med-ST
    "mlm",
    "volume",  # UniMedI's 3-D terms (chapter 11); empty for the others
    "pseudo",
    "selection",
]


class _SkipFirst(Sampler):
    """A batch sampler that skips the first ``skip`` batches of an epoch (resuming mid-epoch without loading them)."""

    def __init__(self, batch_sampler, skip: int = 0) -> None:
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batch_sampler):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)


def loader_for(
    cfg: Config,
    data_dir: str | Path,
    tokenizer: Any,
    *,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    progress: bool = False,
) -> DataLoader:
    """The training loader of ``cfg.model.method`` over the training split of the prepared folder ``data_dir``:
    for ``unimedi`` radiograph batches with CT volumes (:func:`~medst.data.volumes.paired_loader_from_config`,
    batches of :class:`~medst.data.volumes.PairedBatch`; chapter 11), otherwise the Med-ST batches of
    :func:`~medst.data.dataset.loader_from_config`. Both give this process's share of each global batch
    (``rank``, ``world_size``), laterals padded to ``train.group_bucket``; ``progress``: a bar while the volumes
    are read."""
    kwargs: dict[str, Any] = dict(
        split="train",
        train=True,
        rank=rank,
        world_size=world_size,
        lateral_bucket=cfg.train.group_bucket,
        pin_memory=pin_memory,
    )
    if cfg.model.method == "unimedi":
        return paired_loader_from_config(cfg, data_dir, tokenizer, progress=progress, **kwargs)
    return loader_from_config(cfg, data_dir, tokenizer, **kwargs)


def _place(device: str | torch.device) -> tuple[torch.device, distributed.DistInfo]:
    """The device of this process and its place among the processes (with torchrun: its own GPU)."""
    dev = resolve_device(device)
    dist = distributed.init(dev)
    if dev.type == "cuda" and dist.enabled:
        dev = torch.device("cuda", dist.local_rank)
    return dev, dist


class Trainer:
    """Trains a Med-ST model on the batches of a loader into a run folder; :meth:`fit` runs it to ``train.steps``.

    ``model`` (a :class:`~medst.models.medst.MedST`, its weights as built) and ``loader`` (a DataLoader of
    :class:`~medst.data.dataset.Batch`, or of :class:`~medst.data.volumes.PairedBatch` for UniMedI, whose batch
    sampler has ``set_epoch``, e.g. from :func:`loader_for` with this process's ``rank`` and ``world_size``) are
    handed in; the Trainer moves the model to the device, wraps it (DDP, ``torch.compile``), makes the optimiser
    and the schedule, and each epoch draws the loader's batches through a resumable sampler. :meth:`from_config`
    builds both from a profile and a prepared folder (``medst pretrain``, the chapters).
    """

    def __init__(
        self,
        cfg: Config,
        model: torch.nn.Module,
        loader: DataLoader,
        run_dir: str | Path,
        *,
        device: str | torch.device = "auto",
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.cfg, self.loader, self.run_dir = cfg, loader, Path(run_dir)
        self.device, self.dist = _place(device)
        self.progress = progress and self.dist.is_main
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tok_dir = self.run_dir / "tokenizer"
        if self.dist.is_main and not tok_dir.exists():  # the run folder loads on its own (load_run)
            model.text.tokenizer.save_pretrained(str(tok_dir))

        t = cfg.train
        model.vision.group_bucket = t.group_bucket  # the loader's Collator pads the laterals alike
        if self.dist.enabled:
            convert_batchnorm(model)
        self.model = model.to(self.device)
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.enabled
            else self.model
        )
        # With group buckets every batch has one of a few shapes: compile each once, statically.
        self.forward = torch.compile(self.ddp, dynamic=False if t.group_bucket else None) if t.compile else self.ddp
        self.amp = AmpPolicy.from_config(cfg, self.device)
        self.optimizer = optimizer_from_config(self.model, cfg, self.device)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, int(t.warmup_ratio * t.steps), t.steps)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._flushed_at = time.perf_counter()  # when the metrics were last read (see flush)

        if len(loader.batch_sampler) == 0:
            where = getattr(loader.dataset, "root", "the loader")
            raise ValueError(
                f"{where}: the training split is too small for one batch of "
                f"{t.sequences_per_batch} sequences and {t.singles_per_batch} singles per process"
            )
        if resume:
            self._resume()
        elif self.dist.is_main:
            (self.run_dir / "config.json").write_text(cfg.to_json())

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        data_dir: str | Path,
        run_dir: str | Path,
        *,
        device: str | torch.device = "auto",
        resume: bool = False,
        progress: bool = True,
        tokenizer=None,
    ) -> Trainer:
        """A Trainer of the profile ``cfg`` on the training split of the prepared folder ``data_dir``.

        The tokenizer (``tokenizer``, else :func:`~medst.models.build.build_tokenizer`, made by the main process)
        is saved as ``run_dir/tokenizer`` and every process reads it from there; the model is built from
        ``train.seed`` (identical initial weights in every process) and the loader from
        :func:`loader_for` (this process's share of each global batch, laterals padded to ``train.group_bucket``,
        pinned memory on GPUs; radiographs with CT volumes for ``model.method: unimedi``).
        """
        dev, dist = _place(device)
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        tok_dir = run_dir / "tokenizer"
        if tokenizer is None:
            if dist.is_main:
                build_tokenizer(cfg, data_dir).save_pretrained(str(tok_dir))
            distributed.barrier()
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        elif dist.is_main:
            tokenizer.save_pretrained(str(tok_dir))

        seed_everything(cfg.train.seed)  # identical initial weights in every process
        model = build_model(cfg, tokenizer)
        loader = loader_for(
            cfg,
            data_dir,
            tokenizer,
            rank=dist.rank,
            world_size=dist.world_size,
            pin_memory=dev.type == "cuda",
            progress=progress and dist.is_main,
        )
        return cls(cfg, model, loader, run_dir, device=dev, resume=resume, progress=progress)

    # -- data ---------------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        """This epoch's DataLoader: the handed loader's dataset, collate function and workers, its batch sampler
        at this epoch from the current position (resuming mid-epoch), worker seeds drawn per epoch."""
        sampler, workers = self.loader.batch_sampler, self.loader.num_workers
        sampler.set_epoch(self.epoch)
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + self.epoch)  # worker seeds per epoch
        return DataLoader(
            self.loader.dataset,
            batch_sampler=_SkipFirst(sampler, self.batch_in_epoch),
            collate_fn=self.loader.collate_fn,
            num_workers=workers,
            pin_memory=self.loader.pin_memory,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
            generator=gen,
        )

    def batches(self) -> Iterator:
        """Batches forever, epoch after epoch, tracking the position for checkpoints."""
        while True:
            for batch in self._loader():
                self.batch_in_epoch += 1
                yield batch.to(self.device, non_blocking=True)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    # -- checkpoints --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "config": self.cfg.to_json(),
        }

    def save(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.run_dir, self.step, self.state())
        distributed.barrier()

    def _resume(self) -> None:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        state = load_checkpoint(path, self.cfg.to_dict())
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        set_rng_state(state["rng"])
        if self.dist.is_main:
            print(f"resumed from {path} at step {self.step}")

    # -- the loop -----------------------------------------------------------------------------------
    def _autocast(self):
        """The forward passes' mixed precision (:class:`~medst.train.step.AmpPolicy`)."""
        return self.amp.autocast()

    def train_step(self, batches: Iterator) -> dict[str, Any]:
        """One optimiser step over ``accumulation`` micro-batches (:func:`~medst.train.step.train_step`).

        Nothing here waits for the device: the step's loss, terms and gradient norm stay on it, stacked in one
        detached tensor, and the host moves on to the next step. Returns ``{"values": tensor, "names": [...],
        "step", "epoch", "lr", "pairs"}``; :meth:`flush` reads the values of all pending steps at once.
        """
        t = self.cfg.train
        if hasattr(self.model, "temporal_scale"):  # when λ3 joins (loss.temporal_start / temporal_ramp)
            self.model.temporal_scale.fill_(self.cfg.loss.temporal_factor(self.step, t.steps))
        result = train_step(
            self.model,
            batches,
            self.optimizer,
            scheduler=self.scheduler,
            amp=self.amp,
            clip=t.grad_clip,
            accumulation=t.accumulation,
            forward=self.forward,
            no_sync=self.ddp.no_sync if self.dist.enabled else None,
        )
        self.step += 1
        names, values = result.stacked()
        return {
            "values": values,
            "names": names,
            "step": self.step,
            "epoch": self.epoch,
            "lr": result.lr,
            "pairs": result.pairs * self.dist.world_size,
        }

    def flush(self, pending: list[dict[str, Any]]) -> list[dict[str, float]]:
        """The metric rows of the pending steps: the one point where the host waits for the device.

        Their values are averaged over processes and read at once; the time since the last flush is shared
        out over the steps (``seconds``, ``pairs_per_s``). Raises :class:`NonFiniteLoss` naming the first step
        whose loss is NaN or infinite (every process raises alike, as the values are averaged).
        """
        if not pending:
            return []
        values = distributed.mean_across(torch.stack([p["values"] for p in pending])).tolist()
        now = time.perf_counter()
        seconds = (now - self._flushed_at) / len(pending)
        self._flushed_at = now
        rows = []
        for p, vals in zip(pending, values):
            row = dict(
                zip(p["names"], vals),
                step=p["step"],
                epoch=p["epoch"],
                lr=p["lr"],
                seconds=seconds,
                pairs_per_s=p["pairs"] / max(seconds, 1e-9),
            )
            check_finite(
                row["step"],
                row["loss"],
                {k: row[k] for k in p["names"] if k not in ("loss", "grad_norm")},
                f"The last good checkpoint is in {self.run_dir / 'checkpoints'}",
            )
            rows.append(row)
        return rows

    def fit(self) -> list[dict[str, float]]:
        """Train until ``train.steps``; write metrics, checkpoints and the final weights. Returns the metric rows."""
        t = self.cfg.train
        rows: list[dict[str, float]] = []
        metrics = self.run_dir / "metrics.csv"
        writer = None
        if self.dist.is_main:
            fresh = self.step == 0 or not metrics.exists()
            if not fresh:  # drop rows logged after the checkpoint we resumed from
                kept = [r for r in csv.DictReader(metrics.open()) if int(r["step"]) <= self.step]
            fh = metrics.open("w", newline="")
            writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            if not fresh:
                writer.writerows(kept)
        board = _tensorboard(self.run_dir) if self.dist.is_main else None
        batches = self.batches()
        bar = tqdm(total=t.steps, initial=self.step, desc="pretrain", disable=not self.progress, dynamic_ncols=True)
        pending: list[dict[str, Any]] = []
        self._flushed_at = time.perf_counter()
        try:
            while self.step < t.steps:
                pending.append(self.train_step(batches))
                bar.update(1)
                log = self.step % t.log_every == 0 or self.step == t.steps
                checkpoint = self.step % t.checkpoint_every == 0 or self.step == t.steps
                if not (log or checkpoint):
                    continue
                # Values are read only here (and before a checkpoint, so that a non-finite loss never reaches
                # one): between log steps the host queues steps without waiting for the device.
                flushed, pending = self.flush(pending), []
                rows.extend(flushed)
                if log:
                    row = flushed[-1]
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}")
                    if writer is not None:
                        writer.writerow(row)
                        fh.flush()
                    if board is not None:
                        for k, v in row.items():
                            if k not in ("step", "epoch"):
                                board.add_scalar(f"train/{k}", v, self.step)
                if checkpoint:
                    self.save()
        finally:
            bar.close()
            if writer is not None:
                fh.close()
            if board is not None:
                board.close()
        if self.dist.is_main:
            save_weights(self.model, self.run_dir / "model.safetensors", metadata={"config": self.cfg.to_json()})
        distributed.barrier()
        return rows


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def pretrain(
    cfg: Config,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Pre-train Med-ST on a prepared folder into ``run_dir`` (see the module docstring). Returns metric rows."""
    return Trainer.from_config(cfg, data_dir, run_dir, device=device, resume=resume, progress=progress).fit()


def pretrain_main(args) -> None:
    """``medst pretrain``."""
    cfg = load_profile(args.profile, args.overrides)
    try:
        rows = pretrain(cfg, args.data, args.out, device=args.device, resume=args.resume)
    except NonFiniteLoss as err:
        raise SystemExit(f"error: {err}") from None
    if rows and (not is_distributed() or torch.distributed.get_rank() == 0):
        last = rows[-1]
        print(json.dumps({"step": last["step"], "loss": round(last["loss"], 4), "run": str(Path(args.out).resolve())}))
    if is_distributed():
        torch.distributed.destroy_process_group()

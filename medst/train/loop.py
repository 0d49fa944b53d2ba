"""Pre-training: the loop behind ``medst pretrain`` and chapter 7.

One step = ``accumulation`` micro-batches, each a :class:`~medst.data.dataset.Batch` of S sequences of L
studies followed by single studies; AdamW with a cosine schedule after a linear warm-up (transformers'
scheduler); bf16 autocast on GPUs; gradient clipping; a guard that stops on a non-finite loss and keeps the
last good checkpoint. Several processes come from ``torchrun`` (DDP; NCCL on GPUs, gloo on CPUs): each keeps
whole sequences, the global loss sees every process's negatives, and the heads' BatchNorm statistics are
taken over the global batch.

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
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from medst.utils import resolve_device, seed_everything
from medst.models.norm import convert_batchnorm
from medst.train import distributed
from medst.train.checkpoint import (latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, save_weights,
                                    set_rng_state)
from medst.config import Config, load_profile

METRIC_FIELDS = ["step", "epoch", "loss", "global", "local", "temporal", "fmc", "rmr", "lr", "grad_norm",
                 "pairs_per_s", "seconds", "local_word", "local_patch", "word_max_weight", "word_entropy",
                 "patch_max_weight", "patch_entropy"]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run folder keeps its last good checkpoint."""


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


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases, norms, embeddings' position/CLS tokens are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "pos_embed" in name or "cls_token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Holds the model, optimiser, schedule and data of one run; :meth:`fit` runs it to ``train.steps``."""

    def __init__(self, cfg: Config, data_dir: str | Path, run_dir: str | Path, *, device: str = "auto",
                 resume: bool = False, progress: bool = True, tokenizer=None) -> None:
        from transformers import get_cosine_schedule_with_warmup

        from medst.models.build import build_tokenizer
        from medst.models.medst import build_medst

        self.cfg, self.data_dir, self.run_dir = cfg, Path(data_dir), Path(run_dir)
        self.device = resolve_device(device)
        self.dist = distributed.init(self.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.progress = progress and self.dist.is_main
        self.run_dir.mkdir(parents=True, exist_ok=True)

        # The tokenizer is made once (rank 0) and saved with the run; the other processes read it.
        tok_dir = self.run_dir / "tokenizer"
        if tokenizer is None:
            if self.dist.is_main:
                build_tokenizer(cfg, self.data_dir).save_pretrained(str(tok_dir))
            distributed.barrier()
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        elif self.dist.is_main:
            tokenizer.save_pretrained(str(tok_dir))
        self.tokenizer = tokenizer

        seed_everything(cfg.train.seed)  # identical initial weights in every process
        model = build_medst(cfg, tokenizer)
        model.vision.group_bucket = cfg.train.group_bucket  # the Collator pads the laterals alike
        if self.dist.enabled:
            convert_batchnorm(model)
        self.model = model.to(self.device)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None) if self.dist.enabled else self.model)
        # With group buckets every batch has one of a few shapes: compile each once, statically.
        self.forward = (torch.compile(self.ddp, dynamic=False if cfg.train.group_bucket else None)
                        if cfg.train.compile else self.ddp)

        t = cfg.train
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(param_groups(self.model, t.weight_decay), lr=t.lr, betas=(0.9, 0.999),
                                           **({"fused": True} if fused else {}))
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, int(t.warmup_ratio * t.steps), t.steps)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._flushed_at = time.perf_counter()  # when the metrics were last read (see flush)

        self.dataset, self.collate, self.batch_sampler = self._data()
        if resume:
            self._resume()
        elif self.dist.is_main:
            (self.run_dir / "config.json").write_text(cfg.to_json())

    # -- data ---------------------------------------------------------------------------------------
    def _data(self):
        from medst.data.dataset import Collator, SequenceBatchSampler, StudyDataset

        c = self.cfg
        dataset = StudyDataset(self.data_dir, split="train", image_size=c.data.image_size, train=c.data.augment,
                               use_cache=c.data.use_cache)
        sampler = SequenceBatchSampler(dataset, c.train.sequences_per_batch, c.train.singles_per_batch,
                                       sequence_length=c.data.sequence_length, shuffle=True, seed=c.train.seed,
                                       rank=self.dist.rank, world_size=self.dist.world_size)
        if len(sampler) == 0:
            raise ValueError(f"{self.data_dir}: the training split is too small for one batch of "
                             f"{c.train.sequences_per_batch} sequences and {c.train.singles_per_batch} singles "
                             f"per process")
        collate = Collator(self.tokenizer, c.data.max_length, c.data.sequence_length,
                           lateral_bucket=c.train.group_bucket)
        return dataset, collate, sampler

    def _loader(self) -> DataLoader:
        self.batch_sampler.set_epoch(self.epoch)
        workers = self.cfg.data.num_workers
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + self.epoch)  # worker seeds per epoch
        return DataLoader(self.dataset, batch_sampler=_SkipFirst(self.batch_sampler, self.batch_in_epoch),
                          collate_fn=self.collate, num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, prefetch_factor=4 if workers else None, generator=gen)

    def batches(self) -> Iterator:
        """Batches forever, epoch after epoch, tracking the position for checkpoints."""
        while True:
            for batch in self._loader():
                self.batch_in_epoch += 1
                yield batch.to(self.device, non_blocking=True)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    # -- checkpoints --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(), "step": self.step,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "config": self.cfg.to_json()}

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
        if self.cfg.train.precision == "bf16" and self.device.type in ("cuda", "cpu"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self, batches: Iterator) -> dict[str, Any]:
        """One optimiser step over ``accumulation`` micro-batches.

        Nothing here waits for the device: the step's loss, terms and gradient norm stay on it, stacked in one
        detached tensor, and the host moves on to the next step. Returns ``{"values": tensor, "names": [...],
        "step", "epoch", "lr", "pairs"}``; :meth:`flush` reads the values of all pending steps at once.
        """
        t = self.cfg.train
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        pairs = 0
        for micro in range(t.accumulation):
            batch = next(batches)
            pairs += batch.size
            sync = micro == t.accumulation - 1 or not self.dist.enabled
            with (nullcontext() if sync else self.ddp.no_sync()), self._autocast():
                out = self.forward(batch)
            (out.loss / t.accumulation).backward()
            for k, v in {"loss": out.loss.detach(), **out.terms}.items():
                sums[k] = sums.get(k, 0) + v.float() / t.accumulation
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        names = sorted(sums) + ["grad_norm"]
        values = torch.stack([sums[k] for k in names[:-1]] + [grad_norm.detach().float()])
        return {"values": values, "names": names, "step": self.step, "epoch": self.epoch,
                "lr": self.scheduler.get_last_lr()[0], "pairs": pairs * self.dist.world_size}

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
            row = dict(zip(p["names"], vals), step=p["step"], epoch=p["epoch"], lr=p["lr"], seconds=seconds,
                       pairs_per_s=p["pairs"] / max(seconds, 1e-9))
            if not math.isfinite(row["loss"]):
                terms = {k: round(v, 4) for k, v in row.items() if k in p["names"] and k not in ("loss", "grad_norm")}
                raise NonFiniteLoss(f"step {row['step']}: the loss is {row['loss']} (terms: {terms}); stopping. "
                                    f"The last good checkpoint is in {self.run_dir / 'checkpoints'}")
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


def pretrain(cfg: Config, data_dir: str | Path, run_dir: str | Path, *, device: str = "auto", resume: bool = False,
             progress: bool = True) -> list[dict[str, float]]:
    """Pre-train Med-ST on a prepared folder into ``run_dir`` (see the module docstring). Returns metric rows."""
    return Trainer(cfg, data_dir, run_dir, device=device, resume=resume, progress=progress).fit()


def pretrain_main(args) -> None:
    """``medst pretrain``."""
    cfg = load_profile(args.profile, args.overrides)
    try:
        rows = pretrain(cfg, args.data, args.out, device=args.device, resume=args.resume)
    except NonFiniteLoss as err:
        raise SystemExit(f"error: {err}")
    if rows and (not distributed.is_enabled() or torch.distributed.get_rank() == 0):
        last = rows[-1]
        print(json.dumps({"step": last["step"], "loss": round(last["loss"], 4),
                          "run": str(Path(args.out).resolve())}))
    if distributed.is_enabled():
        torch.distributed.destroy_process_group()

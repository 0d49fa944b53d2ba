"""One optimisation step of Med-ST (Method §7), written once for pre-training, ``medst bench`` and the chapters.

A step runs ``accumulation`` micro-batches, each a :class:`~medst.data.dataset.Batch`: forward under the
run's mixed precision (:class:`AmpPolicy`), the objective (7.1) scaled by ``1 / accumulation``, backward;
then the gradient norm is clipped, the optimiser and the schedule step, and the gradients are cleared. The
step's loss, terms and gradient norm stay on the device (:class:`StepResult`): nothing here waits for it, so
the caller decides when to read them and when to apply the non-finite guard (:func:`check_finite`).

The optimiser (Method §7.2): AdamW with betas (0.9, 0.999), weight decay on weight matrices only
(:func:`param_groups`), PyTorch's fused kernel on GPUs (:func:`optimizer_from_config`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

from medst.config import Config
from medst.data.dataset import Batch
from medst.data.volumes import PairedBatch

PRECISIONS = ("fp32", "bf16")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; a run folder keeps its last good checkpoint."""


@dataclass(frozen=True)
class AmpPolicy:
    """The mixed precision of a training step: autocast to ``dtype`` on ``device_type``, or none (fp32).

    The rule (:meth:`from_config`): ``train.precision=bf16`` autocasts to bfloat16 on CUDA and on CPUs, the two
    device types with bfloat16 autocast; anything else runs in float32. The weights stay float32 either way.
    """

    device_type: str
    dtype: torch.dtype | None = None  # None: float32, no autocast

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device | str) -> AmpPolicy:
        """The policy of ``cfg.train.precision`` on ``device``."""
        precision = cfg.train.precision
        if precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        device_type = torch.device(device).type
        bf16 = precision == "bf16" and device_type in ("cuda", "cpu")
        return cls(device_type, torch.bfloat16 if bf16 else None)

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> ContextManager:
        """The context a forward pass runs in: ``torch.autocast`` when enabled, else nothing."""
        return torch.autocast(self.device_type, dtype=self.dtype) if self.enabled else nullcontext()


@dataclass
class StepResult:
    """What one step leaves on the device (every tensor detached, float32, shape []) plus host-side counts.

    ``loss`` and ``terms`` are means over the step's micro-batches; ``grad_norm`` is the total gradient norm
    before clipping; ``pairs`` counts this process's image-report pairs; ``lr`` is the learning rate after the
    schedule's step (the next step's). Reading a tensor (``float``, ``.item()``) waits for the device.
    """

    loss: Tensor
    terms: dict[str, Tensor]
    grad_norm: Tensor
    pairs: int
    lr: float

    def stacked(self) -> tuple[list[str], Tensor]:
        """``(names, values [K])``: the loss and terms in sorted order, then ``grad_norm``, in one tensor
        (one read for the whole step)."""
        sums = {"loss": self.loss, **self.terms}
        names = sorted(sums) + ["grad_norm"]
        return names, torch.stack([sums[k] for k in names[:-1]] + [self.grad_norm])


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases, norms, embeddings' position/CLS tokens are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "pos_embed" in name or "cls_token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_from_config(model: torch.nn.Module, cfg: Config, device: torch.device | str) -> torch.optim.AdamW:
    """AdamW of Method §7.2 over ``model``: ``train.lr``, betas (0.9, 0.999), ``train.weight_decay`` on matrices
    (:func:`param_groups`); the fused kernel on CUDA."""
    t = cfg.train
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(
        param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.999), **({"fused": True} if fused else {})
    )


def train_step(
    model: torch.nn.Module,
    batch: Batch | Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: LRScheduler | None = None,
    amp: AmpPolicy,
    clip: float | None,
    accumulation: int = 1,
    forward: Callable[[Batch], Any] | None = None,
    no_sync: Callable[[], ContextManager] | None = None,
) -> StepResult:
    """One optimiser step over ``accumulation`` micro-batches; nothing in it waits for the device.

    Args:
        model: the module trained (put in training mode; its parameters' gradients are clipped).
        batch: one :class:`Batch` or :class:`~medst.data.volumes.PairedBatch` (``accumulation`` 1), or an
            iterable of them from which ``accumulation`` micro-batches are drawn one at a time (each is loaded
            just before its forward pass).
        optimizer, scheduler: stepped once each (``scheduler`` None: no schedule).
        amp: the forward passes' mixed precision (:meth:`AmpPolicy.from_config`).
        clip: maximum total gradient norm; 0 or None: no clipping (the norm is still measured).
        forward: what runs a batch, default ``model``; e.g. its DDP or ``torch.compile`` wrapper. It returns an
            output with ``loss`` (scalar) and ``terms`` (name -> scalar), as :class:`~medst.models.medst.MedST`.
        no_sync: DDP's ``no_sync``: every micro-batch but the last runs in it (the gradients are reduced once).

    Returns:
        :class:`StepResult` (device tensors; the gradients are cleared, set to None).
    """
    if isinstance(batch, (Batch, PairedBatch)):
        if accumulation != 1:
            raise ValueError(f"train_step: one Batch given for {accumulation} micro-batches; pass an iterator")
        batch = (batch,)
    micro_batches = iter(batch)
    forward = model if forward is None else forward
    model.train()
    sums: dict[str, Tensor] = {}
    pairs = 0
    for micro in range(accumulation):
        b = next(micro_batches)
        pairs += b.size
        sync = micro == accumulation - 1 or no_sync is None
        with nullcontext() if sync else no_sync(), amp.autocast():
            out = forward(b)
        (out.loss / accumulation).backward()
        for k, v in {"loss": out.loss.detach(), **out.terms}.items():
            sums[k] = sums.get(k, 0) + v.float() / accumulation
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip or float("inf"))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    lr = scheduler.get_last_lr()[0] if scheduler is not None else optimizer.param_groups[0]["lr"]
    loss = sums.pop("loss")
    return StepResult(loss=loss, terms=sums, grad_norm=grad_norm.detach().float(), pairs=pairs, lr=lr)


def check_finite(step: int, loss: float, terms: Mapping[str, float], note: str = "") -> None:
    """The non-finite guard, on values read on the host: raises :class:`NonFiniteLoss` naming ``step``, the loss
    and the terms (rounded) when ``loss`` is NaN or infinite; ``note`` ends the message."""
    if not math.isfinite(loss):
        rounded = {k: round(v, 4) for k, v in terms.items()}
        raise NonFiniteLoss(
            f"step {step}: the loss is {loss} (terms: {rounded}); stopping." + (f" {note}" if note else "")
        )

"""Several processes: set-up from ``torchrun``'s environment, and BatchNorm statistics over all of them.

``torchrun --nproc_per_node=2 -m medst.cli pretrain ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous address; :func:`init` reads them and joins the process group (NCCL on GPUs, gloo on CPUs).
With one process nothing is initialised and everything below is the identity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment variables (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def mean_across(values: torch.Tensor) -> torch.Tensor:
    """Average a (detached) tensor over processes, e.g. to log one loss for the whole run."""
    if not is_enabled():
        return values
    values = values.detach().clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


class _SumAcross(torch.autograd.Function):
    """Sum a tensor over processes; the gradient of every process's copy is the sum of all their gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are taken over the tokens of every process.

    With one process it is exactly :class:`torch.nn.BatchNorm1d`. With several, the per-channel sums and
    counts, then the sums of squared deviations, are all-reduced with a differentiable all-reduce, so the
    normalisation and its gradient are those of one process holding the global batch (processes may hold
    different numbers of rows, as the masked local heads do). Unlike :class:`torch.nn.SyncBatchNorm` it also runs on CPUs
    with the gloo backend.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_enabled()):
            return super().forward(x)
        return batch_norm_rows(self, x)


def batch_norm_rows(bn: nn.BatchNorm1d, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``bn`` on x [n, C] in training mode, with statistics over the rows where ``valid`` [n] is True (all rows
    if None) and, for a :class:`GlobalBatchNorm1d` with several processes, over every process's rows.

    The other rows are normalised with the same statistics and have no influence on them (nor receive any
    gradient through them). Unlike selecting the valid rows first (``x[valid]``), the shapes do not depend on
    the data, so the host never waits for the device. Running statistics are updated as BatchNorm does.
    """
    xf = x.float()
    w = None if valid is None else valid.to(xf.dtype)[:, None]
    across = _SumAcross.apply if isinstance(bn, GlobalBatchNorm1d) and is_enabled() else (lambda t: t)
    # Two passes (mean, then squared deviations) as BatchNorm does: E[x²] - E[x]² loses precision when
    # the mean is large against the spread, as it is for a ViT's [CLS] features.
    count = xf.new_tensor([x.shape[0]]) if w is None else w.sum(0)
    sums = across(torch.cat([(xf if w is None else xf * w).sum(0), count]))
    count = sums[-1]
    mean = sums[:-1] / count
    dev = (xf - mean) ** 2
    var = across((dev if w is None else dev * w).sum(0)) / count
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked
            bn.running_mean.mul_(1 - m).add_(mean.detach() * m)
            unbiased = var.detach() * count / (count - 1).clamp_min(1)
            bn.running_var.mul_(1 - m).add_(unbiased * m)
    y = (xf - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight + bn.bias
    return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d in ``module`` by :class:`GlobalBatchNorm1d`, keeping its parameters and buffers."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm1d) and not isinstance(child, GlobalBatchNorm1d):
            new = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(next(child.buffers(), torch.empty(0)).device)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module

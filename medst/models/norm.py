"""BatchNorm over the rows that count: the heads' valid tokens, and every process's rows.

The global and local heads (:mod:`medst.models.heads`) end in BatchNorm1d, as the published projection heads
do. Two things differ from :class:`torch.nn.BatchNorm1d`: padded tokens must not enter the statistics, and with
several processes the statistics are those of the global batch. The sum over processes is
``torch.distributed.nn.functional.all_reduce``, whose gradient is itself an all-reduce.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.nn.functional import all_reduce

from medst.utils import is_distributed


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are taken over the tokens of every process.

    With one process it is exactly :class:`torch.nn.BatchNorm1d`. With several, the per-channel sums and
    counts, then the sums of squared deviations, are all-reduced with a differentiable all-reduce, so the
    normalisation and its gradient are those of one process holding the global batch (processes may hold
    different numbers of rows, as the masked local heads do). Unlike
    :class:`torch.nn.SyncBatchNorm` it also runs on CPUs
    with the gloo backend.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
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
    across = all_reduce if isinstance(bn, GlobalBatchNorm1d) and is_distributed() else (lambda t: t)
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
            new = GlobalBatchNorm1d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            ).to(next(child.buffers(), torch.empty(0)).device)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module

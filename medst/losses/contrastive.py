"""Global image-report alignment, a symmetric InfoNCE (Method §4).

    s_ij = <v_i, t_j> / tau,     L_global = CE(s, I) + CE(s^T, I)

with v_i the image and t_j the report embedding of pair i / j, each cross-entropy the
mean over rows. Inputs are assumed L2-normalised (the model normalises after the heads).

Several processes (ours): each process gathers every process's embeddings with a
gradient-preserving all-gather, so the negatives are the whole global batch, while its
own B pairs are the positives at columns rank*B ... rank*B + B - 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sends each process the gradient of its rows.

    Forward: [B, d] on every rank -> [world*B, d] (rank r's rows at r*B). Backward: the
    gradients that all ranks computed for the gathered tensor are summed (all_reduce),
    and each rank keeps the slice of its own rows. Works on every backend (gloo, nccl).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[B, d] -> ([world*B, d], offset of this process's rows). Identity without distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


def global_alignment_loss(img: torch.Tensor, txt: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric image-report InfoNCE (Method §4).

    Args:
        img: [B, d] image embeddings, L2-normalised.
        txt: [B, d] report embeddings, L2-normalised; row i pairs with img row i.
        temperature: tau.
    Returns:
        scalar: CE(image -> reports) + CE(report -> images), each a mean over the B local rows.

    Distributed (world size R > 1, every rank with the same B): each rank scores its
    own B rows against all R*B gathered embeddings, and returns the mean over its B
    rows. The mean of the R ranks' losses is then exactly the single-process loss on
    the concatenated batch, and because the gather's backward sums every rank's
    gradient for each row, DDP's averaging of parameter gradients (divide by R) yields
    exactly that single-process loss's gradient. (Each rank's gradient w.r.t. its own
    embeddings is R times the single-process one; DDP's division undoes this.)
    """
    if img.shape != txt.shape or img.dim() != 2:
        raise ValueError(
            f"medst/losses/contrastive.py: img {tuple(img.shape)} and txt {tuple(txt.shape)} must both be [B, d]"
        )
    all_img, offset = gather_with_grad(img)
    all_txt, _ = gather_with_grad(txt)
    targets = torch.arange(img.shape[0], device=img.device) + offset
    logits_i2t = img @ all_txt.t() / temperature  # [B, R*B]: row i = image i vs every report
    logits_t2i = txt @ all_img.t() / temperature  # [B, R*B]: row j = report j vs every image
    return F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets)

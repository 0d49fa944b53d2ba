"""Cross-modal bidirectional cycle consistency (Method §6).

Each sequence holds L studies of one patient in time order; ``a`` and ``b``
are the global embeddings of one modality each (images and reports), shape
[S, L, d] for S sequences. Everything is batched over sequences: no Python
loop over S.

* FMC, forward mapping classification a→b (one hop): step t of ``a`` must
  pick step t of ``b``, ``CE(sim(a_t, b_·)/T, t)``.
* RMR, reverse mapping regression a→b→a (two hops): the soft nearest
  neighbour ``ṽ_t = Σ_k β_tk b_k`` of ``a_t`` in ``b`` is mapped back onto
  ``a``; the time position it lands on, ``μ_t = Σ_k α_tk τ_k``, must return
  to ``τ_t``, with a variance-aware regression loss.

``sim`` is ``-‖x - y‖²`` ("l2", published default) or the dot product
``<x, y>`` ("cosine": the public code's cosine option is the plain dot
product, which is the cosine similarity for the L2-normalised embeddings the
model produces; the soft nearest neighbour ṽ is not re-normalised).
The squared distance is computed from the difference ``x - y`` (not from the
expansion ``‖x‖² + ‖y‖² - 2<x, y>``), so it is exact and never negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = [
    "pairwise_similarity",
    "fmc_loss",
    "rmr_loss",
    "rmr_details",
    "RMRDetails",
    "cycle_consistency_loss",
    "temporal_loss",
    "VARIANCE_EPS",
]

VARIANCE_EPS = 1e-7  # added to σ² in both the division and the log, as published
_SIMILARITIES = ("l2", "cosine")


def _check(a: Tensor, b: Tensor, similarity: str, temperature: float) -> None:
    if a.dim() != 3 or a.shape != b.shape:
        raise ValueError(
            f"medst.losses.temporal: a and b must both be [S, L, d] with the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[1] < 2:
        raise ValueError(f"medst.losses.temporal: sequences need L >= 2 steps, got L = {a.shape[1]}")
    if similarity not in _SIMILARITIES:
        raise ValueError(f"medst.losses.temporal: similarity must be one of {_SIMILARITIES}, got {similarity!r}")
    if temperature <= 0:
        raise ValueError(f"medst.losses.temporal: temperature must be positive, got {temperature}")


def pairwise_similarity(x: Tensor, y: Tensor, similarity: str = "l2") -> Tensor:
    """sim(x_t, y_k) for all pairs: x [S, L, d], y [S, M, d] -> [S, L, M]."""
    if similarity == "l2":
        return -(x[:, :, None, :] - y[:, None, :, :]).pow(2).sum(dim=-1)
    if similarity == "cosine":
        return x @ y.transpose(1, 2)
    raise ValueError(f"medst.losses.temporal: similarity must be one of {_SIMILARITIES}, got {similarity!r}")


def fmc_loss(a: Tensor, b: Tensor, *, temperature: float = 0.1, similarity: str = "l2") -> Tensor:
    """Forward mapping classification a→b (Method §6).

    ``logits_tk = sim(a_t, b_k) / T``; ``L_FMC = CE(logits_t,:, t)`` averaged
    over steps t and sequences.

    Args:
        a, b: [S, L, d] sequences of embeddings of the two modalities.
    Returns:
        scalar loss.
    """
    _check(a, b, similarity, temperature)
    logits = pairwise_similarity(a, b, similarity) / temperature  # [S, L, L]
    seqs, steps, _ = logits.shape
    targets = torch.arange(steps, device=a.device).expand(seqs, steps)
    return F.cross_entropy(rearrange(logits, "s t k -> s k t"), targets)  # the classes k at dim 1


@dataclass
class RMRDetails:
    """Intermediates of the reverse mapping regression a→b→a (S sequences, L steps)."""

    beta: Tensor  # [S, L, L] β_tk = softmax_k(sim(a_t, b_k)/T)
    soft_nn: Tensor  # [S, L, d] ṽ_t = Σ_k β_tk b_k
    alpha: Tensor  # [S, L, L] α_tk = softmax_k(sim(ṽ_t, a_k)/T)
    times: Tensor  # [L] normalised time positions τ_k = k / L
    mu: Tensor  # [S, L] predicted time μ_t = Σ_k α_tk τ_k
    var: Tensor  # [S, L] σ²_t = Σ_k α_tk (τ_k - μ_t)²
    error: Tensor  # [S, L] e_t = τ_t - μ_t
    loss_per_step: Tensor  # [S, L] loss_t

    @property
    def loss(self) -> Tensor:
        """L_RMR: mean of loss_t over steps and sequences."""
        return self.loss_per_step.mean()


def rmr_details(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float = 0.1,
    similarity: str = "l2",
    variance_lambda: float = 1e-3,
    huber_delta: float = 2.0,
) -> RMRDetails:
    """Reverse mapping regression a→b→a with all intermediates (Method §6).

    1. ``β_tk = softmax_k(sim(a_t, b_k)/T)``, ``ṽ_t = Σ_k β_tk b_k``;
    2. ``α_tk = softmax_k(sim(ṽ_t, a_k)/T)``;
    3. ``τ_k = k/L`` (the public code divides by L, not L-1, so targets lie in
       [0, 1)), ``μ_t = Σ_k α_tk τ_k``, ``σ²_t = Σ_k α_tk (τ_k - μ_t)²``;
    4. ``e_t = τ_t - μ_t``; if ``|e_t| < δ``:
       ``loss_t = e_t² / (σ²_t + ε) + λ log(σ²_t + ε)`` with ε = 1e-7,
       else the linear Huber branch ``δ(|e_t| - δ/2)``.

    With the published settings the Huber branch never fires: targets and
    predictions both lie in [0, 1), so ``|e_t| < 1 < δ = 2``. ``huber_delta``
    is kept as a parameter (a δ below 1 makes it fire).

    Args:
        a, b: [S, L, d].
    Returns:
        :class:`RMRDetails`; ``.loss`` is L_RMR.
    """
    _check(a, b, similarity, temperature)
    steps = a.shape[1]
    beta = (pairwise_similarity(a, b, similarity) / temperature).softmax(dim=-1)  # [S, L, L]
    soft_nn = beta @ b  # [S, L, d]
    alpha = (pairwise_similarity(soft_nn, a, similarity) / temperature).softmax(dim=-1)  # [S, L, L]
    times = torch.arange(steps, device=a.device, dtype=a.dtype) / steps  # [L]
    mu = alpha @ times  # [S, L]
    var = (alpha * (times[None, None, :] - mu[..., None]).pow(2)).sum(dim=-1)  # [S, L]
    error = times[None, :] - mu
    log_var = torch.log(var + VARIANCE_EPS)
    var_loss = error.pow(2) / (var + VARIANCE_EPS) + variance_lambda * log_var
    linear_loss = huber_delta * (error.abs() - huber_delta / 2)
    loss_per_step = torch.where(error.abs() < huber_delta, var_loss, linear_loss)
    return RMRDetails(
        beta=beta, soft_nn=soft_nn, alpha=alpha, times=times, mu=mu, var=var, error=error, loss_per_step=loss_per_step
    )


def rmr_loss(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float = 0.1,
    similarity: str = "l2",
    variance_lambda: float = 1e-3,
    huber_delta: float = 2.0,
) -> Tensor:
    """L_RMR(a→b→a), mean over steps and sequences; see :func:`rmr_details`. a, b: [S, L, d] -> scalar."""
    return rmr_details(
        a, b, temperature=temperature, similarity=similarity, variance_lambda=variance_lambda, huber_delta=huber_delta
    ).loss


def cycle_consistency_loss(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float = 0.1,
    similarity: str = "l2",
    variance_lambda: float = 1e-3,
    huber_delta: float = 2.0,
) -> Tensor:
    """FMC(a→b) + RMR(a→b→a) for a, b [S, L, d] -> scalar (Method §6, one direction)."""
    return fmc_loss(a, b, temperature=temperature, similarity=similarity) + rmr_loss(
        a, b, temperature=temperature, similarity=similarity, variance_lambda=variance_lambda, huber_delta=huber_delta
    )


def temporal_loss(u: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
    """L_temporal = FMC(U→V) + RMR(U→V→U) + FMC(V→U) + RMR(V→U→V).

    Args:
        u: [S, L, d] global image embeddings of S sequences; v: [S, L, d] report embeddings.
        kwargs: passed to :func:`cycle_consistency_loss` (temperature, similarity, ...).
    Returns:
        scalar loss.
    """
    return cycle_consistency_loss(u, v, **kwargs) + cycle_consistency_loss(v, u, **kwargs)

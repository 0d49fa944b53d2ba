"""Exercises 6.1 and 6.2 (chapter 6, Method §6): forward mapping classification and reverse mapping regression.

The checkers compare values and gradients of the reader's ``fmc`` and ``rmr`` with
:func:`medst.losses.temporal.fmc_loss` and :func:`medst.losses.temporal.rmr_loss` (L2 similarity) on random
sequences, short and identical ones included.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, argument_ignored, randn, run_check
from medst.losses.temporal import fmc_loss, rmr_details, rmr_loss


def _sequence_case(seed: int, seqs: int, steps: int, dim: int, scale: float, close: bool, **kwargs: float) -> Case:
    """Random sequences a, b [S, L, d] (b = a + noise when ``close``), keyword arguments as given."""
    a = randn(seqs, steps, dim, seed=seed, scale=scale)
    b = (
        a + randn(seqs, steps, dim, seed=60 + seed, scale=0.5 * scale)
        if close
        else randn(seqs, steps, dim, seed=60 + seed, scale=scale)
    )
    options = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    label = (
        f"a, b [S={seqs}, L={steps}, d={dim}] random (seed {seed}, scale {scale}"
        f"{', b close to a' if close else ''}), {options}{' (L = 2)' if steps == 2 else ''}"
    )
    return Case(label, (a, b), kwargs, grad=(0, 1))


def _identical_case(**kwargs: float) -> Case:
    same = randn(2, 4, 8, seed=90, scale=0.4)
    options = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return Case(f"a = b [S=2, L=4, d=8] (identical sequences), {options}", (same, same.clone()), kwargs, grad=(0, 1))


def _fmc_cases() -> list[Case]:
    shapes = [
        (3, 4, 8, 0.5, False, 0.1),
        (2, 5, 4, 0.5, True, 0.5),
        (1, 2, 3, 0.5, False, 0.1),
        (4, 4, 8, 0.3, True, 1.0),
        (2, 3, 6, 1.0, False, 0.1),
    ]
    return [_sequence_case(seed, *shape[:5], temperature=shape[5]) for seed, shape in enumerate(shapes)] + [
        _identical_case(temperature=0.1)
    ]


def _rmr_cases() -> list[Case]:
    """Inputs whose losses stay moderate (an RMR loss explodes when σ² is tiny and the cycle misses)."""
    shapes = [
        (3, 4, 8, 0.5, True, 0.1),
        (2, 5, 4, 0.5, False, 0.5),
        (1, 2, 3, 0.5, False, 0.1),
        (4, 4, 8, 0.3, False, 1.0),
        (2, 3, 6, 1.0, True, 0.3),
        (2, 6, 8, 0.4, True, 0.2),
    ]
    cases = [
        _sequence_case(seed, *shape[:5], temperature=shape[5], variance_lambda=1e-3)
        for seed, shape in enumerate(shapes)
    ]
    return cases + [
        _identical_case(temperature=0.1, variance_lambda=1e-3),
        _sequence_case(7, 2, 4, 8, 0.5, False, temperature=0.5, variance_lambda=0.1),
    ]


def _l2(x: Tensor, y: Tensor) -> Tensor:
    return -(x[:, :, None] - y[:, None, :]).pow(2).sum(-1)


def _fmc_variant(a, b, temperature=0.1, *, sign=1.0, scale=True, cosine=False, swap=False, reduce="mean"):
    if swap:
        a, b = b, a
    sim = a @ b.transpose(1, 2) if cosine else sign * _l2(a, b)
    logits = sim / (temperature if scale else 1.0)
    seqs, steps, _ = logits.shape
    ce = F.cross_entropy(logits.reshape(-1, steps), torch.arange(steps).repeat(seqs), reduction="none")
    return ce.sum() if reduce == "sum" else ce.mean()


def check_fmc(fn: Callable) -> CheckResult:
    """Grade exercise 6.1: ``fn(a, b, temperature=0.1)`` for a, b [S, L, d] must return the scalar
    :func:`medst.losses.temporal.fmc_loss` with the L2 similarity (values and gradients)."""

    def reference(a, b, temperature=0.1):
        return fmc_loss(a, b, temperature=temperature, similarity="l2")

    def variant(**options):
        return lambda a, b, temperature=0.1: _fmc_variant(a, b, temperature, **options)

    return run_check(
        Check(
            "6.1",
            "forward mapping classification",
            "fmc",
            _fmc_cases(),
            reference,
            forbidden=(fmc_loss,),
            hint="logits_tk = -||a_t - b_k||^2 / T for every pair of steps of one sequence ([S, L, L]); the class of "
            "row t is t; L_FMC is the cross-entropy averaged over steps and sequences.",
            mistakes=[
                ("the similarity has the wrong sign: sim = -||a_t - b_k||^2 (closer = larger)", variant(sign=-1.0)),
                ("the logits are not divided by the temperature", variant(scale=False)),
                (
                    "the direction is b -> a; FMC(a -> b) classifies each step of a among the steps of b",
                    variant(swap=True),
                ),
                ("a dot product is used; this exercise uses the L2 similarity -||x - y||^2", variant(cosine=True)),
                ("the cross-entropies are summed; L_FMC is their mean over steps and sequences", variant(reduce="sum")),
                argument_ignored(reference, "temperature", 0.1),
            ],
        ),
        fn,
    )


def _rmr_variant(a, b, temperature=0.1, variance_lambda=1e-3, *, denominator="L", log_term=True, divide_var=True):
    steps = a.shape[1]
    beta = (_l2(a, b) / temperature).softmax(-1)
    alpha = (_l2(beta @ b, a) / temperature).softmax(-1)
    times = torch.arange(steps, dtype=a.dtype) / (steps if denominator == "L" else steps - 1)
    mu = alpha @ times
    var = (alpha * (times - mu[..., None]) ** 2).sum(-1)
    error = (times - mu) ** 2
    loss = error / (var + 1e-7) if divide_var else error
    if log_term:
        loss = loss + variance_lambda * torch.log(var + 1e-7)
    return loss.mean()


def check_rmr(fn: Callable) -> CheckResult:
    """Grade exercise 6.2: ``fn(a, b, temperature=0.1, variance_lambda=1e-3)`` for a, b [S, L, d] must return
    the scalar :func:`medst.losses.temporal.rmr_loss` with the L2 similarity (values and gradients)."""

    def reference(a, b, temperature=0.1, variance_lambda=1e-3):
        return rmr_loss(a, b, temperature=temperature, similarity="l2", variance_lambda=variance_lambda)

    def variant(**options):
        return lambda a, b, temperature=0.1, variance_lambda=1e-3: _rmr_variant(
            a, b, temperature, variance_lambda, **options
        )

    return run_check(
        Check(
            "6.2",
            "reverse mapping regression",
            "rmr",
            _rmr_cases(),
            reference,
            forbidden=(rmr_loss, rmr_details),
            hint="β = softmax_k(-||a_t - b_k||^2 / T); ṽ = β @ b; α = softmax_k(-||ṽ_t - a_k||^2 / T); τ_k = k / L; "
            "μ = α @ τ; σ² = Σ_k α_tk (τ_k - μ_t)^2; loss_t = (τ_t - μ_t)^2 / (σ²_t + 1e-7) + λ log(σ²_t + 1e-7), "
            "averaged over steps and sequences.",
            mistakes=[
                (
                    "the time positions are k / (L - 1); the published code (and medst) uses τ_k = k / L",
                    variant(denominator="L-1"),
                ),
                ("the variance term λ·log(σ² + 1e-7) is missing", variant(log_term=False)),
                ("the squared error is not divided by the variance σ² + 1e-7", variant(divide_var=False)),
                argument_ignored(reference, "temperature", 0.1),
                argument_ignored(reference, "variance_lambda", 1e-3),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# The exercise text; the solution is solutions/ch06_fmc.py, ch06_rmr.py
# ----------------------------------------------------------------------------------------------------
FMC = r"""
Write `fmc(a, b, temperature=0.1)` for two sequences of embeddings `a`, `b` of shape `[S, L, d]`
with the L2 similarity $\mathrm{sim}(x, y) = -\lVert x - y\rVert^2$:

$$\text{logits}_{tk} = \mathrm{sim}(a_t, b_k) / T, \qquad
\mathcal{L}_\text{FMC} = \mathrm{CE}(\text{logits}_{t,:},\ t)$$

averaged over steps $t$ and sequences, with no Python loop over sequences. The check compares values
and gradients with `medst.losses.temporal.fmc_loss` (also for $L = 2$ and identical sequences).
"""

RMR = r"""
Write `rmr(a, b, temperature=0.1, variance_lambda=1e-3)`, the two-hop cycle $a \to b \to a$
with the L2 similarity: $\beta_{tk} = \mathrm{softmax}_k(\mathrm{sim}(a_t, b_k)/T)$,
$\tilde v_t = \sum_k \beta_{tk} b_k$, $\alpha_{tk} = \mathrm{softmax}_k(\mathrm{sim}(\tilde v_t, a_k)/T)$;
time positions $\tau_k = k/L$, prediction $\mu_t = \sum_k \alpha_{tk}\tau_k$, variance
$\sigma_t^2 = \sum_k \alpha_{tk}(\tau_k - \mu_t)^2$, and

$$\text{loss}_t = \frac{(\tau_t - \mu_t)^2}{\sigma_t^2 + 10^{-7}} + \lambda \log(\sigma_t^2 + 10^{-7}),$$

averaged over steps and sequences. (The Huber branch of the paper never fires: $|\tau_t - \mu_t| < 1 < \delta = 2$.)
The check compares values and gradients with `medst.losses.temporal.rmr_loss`.
"""

CHAPTER = "06_temporal"
EXERCISES = [
    Exercise(
        key="fmc",
        chapter=CHAPTER,
        number="6.1",
        title="forward mapping classification",
        function="fmc",
        prompt=FMC,
        solution="ch06_fmc",
        checker=check_fmc,
    ),
    Exercise(
        key="rmr",
        chapter=CHAPTER,
        number="6.2",
        title="reverse mapping regression",
        function="rmr",
        prompt=RMR,
        solution="ch06_rmr",
        checker=check_rmr,
    ),
]

"""Exercises 6.1-6.3 (chapter 6, Method §6): what a miss costs, RMR as a plain squared error, sequences of
different lengths.

* 6.1 (easy) ``miss_costs``: the terms of RMR for a cycle that leaks a mass ε from step t to each other step,
  computed here from the definitions (Method §6.3, eq. 6.6-6.7): e²/σ² does not depend on the distance of the
  miss, the plain e² does.
* 6.2 (medium) ``rmr_mse``: RMR with the plain squared error ``mean (τ_t - μ_t)²``, compared in values and
  gradients with ``rmr_details(...).error`` of :mod:`medst.losses.temporal`.
* 6.3 (hard) ``masked_cycle_loss``: FMC(a→b) + RMR(a→b→a) on sequences padded to one length, compared with
  :func:`medst.losses.temporal.cycle_consistency_loss` on each sequence cut to its own length, every step
  counting once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, argument_ignored, randn, run_check
from medst.losses.temporal import (
    VARIANCE_EPS,
    cycle_consistency_loss,
    fmc_loss,
    pairwise_similarity,
    rmr_details,
    rmr_loss,
    temporal_loss,
)

_LIBRARY = (fmc_loss, rmr_loss, rmr_details, cycle_consistency_loss, temporal_loss, pairwise_similarity)


def _l2(x: Tensor, y: Tensor) -> Tensor:
    """sim(x_t, y_k) = -||x_t - y_k||² for x, y [S, L, d] -> [S, L, L]."""
    return -(x[:, :, None] - y[:, None, :]).pow(2).sum(-1)


def _sequences(seed: int, seqs: int, steps: int, dim: int, scale: float, close: bool) -> tuple[Tensor, Tensor, str]:
    """Random sequences a, b [S, L, d] (b = a + noise when ``close``) and their description."""
    a = randn(seqs, steps, dim, seed=seed, scale=scale)
    noise = randn(seqs, steps, dim, seed=60 + seed, scale=(0.5 if close else 1.0) * scale)
    b = a + noise if close else noise
    text = f"a, b [S={seqs}, L={steps}, d={dim}] random (seed {seed}, scale {scale}{', b close to a' if close else ''})"
    return a, b, text


# ----------------------------------------------------------------------------------------------------
# Exercise 6.1: what a miss costs
# ----------------------------------------------------------------------------------------------------
def _miss_variant(L, t, eps, variance_lambda=1e-3, *, denominator="L", add=True, around="mu", eps_var=True):
    times = torch.arange(L, dtype=torch.float64) / (L if denominator == "L" else L - 1)
    alpha = torch.zeros(L, L, dtype=torch.float64)  # row k: the landing distribution when ε leaks to step k
    alpha[:, t] = 1 - eps
    if add:
        alpha[torch.arange(L), torch.arange(L)] += eps
    else:  # the leak overwrites the mass on t in row k = t
        alpha[torch.arange(L), torch.arange(L)] = eps
    mu = alpha @ times
    centre = mu if around == "mu" else torch.full_like(mu, float(times[t]))
    var = (alpha * (times[None, :] - centre[:, None]) ** 2).sum(dim=1)
    e2 = (times[t] - mu) ** 2
    floor = VARIANCE_EPS if eps_var else 0.0
    return torch.stack([e2, e2 / (var + floor), variance_lambda * torch.log(var + floor)], dim=1)


def check_miss_costs(fn: Callable) -> CheckResult:
    """Grade exercise 6.1: ``fn(L, t, eps, variance_lambda=1e-3)`` must return [L, 3]: for every step k, the
    plain squared error e_t², RMR's e_t²/(σ_t² + 1e-7) and λ log(σ_t² + 1e-7) when the cycle from step t keeps
    1 - eps on t and leaks eps to k (nothing leaks for k = t)."""
    specs = [(4, 0, 0.1, 1e-3), (5, 2, 0.2, 1e-3), (2, 1, 0.5, 1e-3), (6, 3, 0.01, 0.1), (3, 0, 0.9, 1e-3)]
    cases = [
        Case(
            f"L={L}, t={t}, eps={eps}, variance_lambda={lam}"
            + (" (the chapter's example)" if (L, t) == (4, 0) else "")
            + (" (more mass leaks than stays)" if eps > 0.5 else ""),
            (L, t, eps),
            {"variance_lambda": lam},
        )
        for L, t, eps, lam in specs
    ]

    def variant(**options):
        return lambda L, t, eps, variance_lambda=1e-3: _miss_variant(L, t, eps, variance_lambda, **options)

    return run_check(
        Check(
            "6.1",
            "what a miss costs",
            "miss_costs",
            cases,
            _miss_variant,
            forbidden=_LIBRARY,
            hint="row k: α_t = (1 - eps) on step t plus eps on step k (α_t = one-hot on t when k = t); τ_j = j / L; "
            "μ = Σ_j α_j τ_j; σ² = Σ_j α_j (τ_j - μ)²; e = τ_t - μ; the row is (e², e² / (σ² + 1e-7), "
            "λ log(σ² + 1e-7)).",
            mistakes=[
                ("the time positions are k / (L - 1); RMR uses τ_k = k / L", variant(denominator="L-1")),
                (
                    "in the row k = t the two masses must add up: the cycle lands on t with mass (1 - eps) + eps = 1",
                    variant(add=False),
                ),
                (
                    "σ² is taken around the target τ_t; it is the variance of the landing, around its mean μ_t",
                    variant(around="target"),
                ),
                (
                    "σ² gets no 1e-7 (VARIANCE_EPS): where nothing leaks, σ² = 0 and the terms are not finite",
                    variant(eps_var=False),
                ),
                argument_ignored(_miss_variant, "variance_lambda", 1e-3),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# Exercise 6.2: RMR with the plain squared error
# ----------------------------------------------------------------------------------------------------
def _mse_cases() -> list[Case]:
    shapes = [  # seed, seqs, steps, dim, scale, close, temperature; first a case where every mistake differs
        (1, 2, 5, 4, 0.5, False, 0.5),
        (0, 3, 4, 8, 0.5, True, 0.1),
        (2, 1, 2, 3, 0.5, False, 0.1),
        (3, 4, 4, 8, 0.3, False, 1.0),
        (4, 2, 6, 8, 0.4, True, 0.2),
    ]
    cases = []
    for seed, seqs, steps, dim, scale, close, tau in shapes:
        a, b, text = _sequences(seed, seqs, steps, dim, scale, close)
        cases.append(
            Case(
                f"{text}, temperature={tau}{' (L = 2)' if steps == 2 else ''}",
                (a, b),
                {"temperature": tau},
                grad=(0, 1),
            )
        )
    same = randn(2, 4, 8, seed=90, scale=0.4)
    cases.append(
        Case(
            "a = b [S=2, L=4, d=8] (identical sequences), temperature=0.1",
            (same, same.clone()),
            {"temperature": 0.1},
            grad=(0, 1),
        )
    )
    return cases


def _mse_reference(a, b, temperature=0.1):
    return rmr_details(a, b, temperature=temperature, similarity="l2").error.pow(2).mean()


def _mse_variant(a, b, temperature=0.1, *, sign=1.0, denominator="L", divide=False, hops=2, swap=False):
    if swap:
        a, b = b, a
    steps = a.shape[1]
    beta = (sign * _l2(a, b) / temperature).softmax(-1)
    alpha = (sign * _l2(beta @ b, a) / temperature).softmax(-1) if hops == 2 else beta
    times = torch.arange(steps, dtype=a.dtype) / (steps if denominator == "L" else steps - 1)
    mu = alpha @ times
    error = (times - mu) ** 2
    if divide:
        error = error / ((alpha * (times - mu[..., None]) ** 2).sum(-1) + VARIANCE_EPS)
    return error.mean()


def check_rmr_mse(fn: Callable) -> CheckResult:
    """Grade exercise 6.2: ``fn(a, b, temperature=0.1)`` for a, b [S, L, d] must return the scalar mean over steps
    and sequences of (τ_t - μ_t)², μ_t the time where the cycle a→b→a lands (L2 similarity; values and
    gradients)."""

    def variant(**options):
        return lambda a, b, temperature=0.1: _mse_variant(a, b, temperature, **options)

    return run_check(
        Check(
            "6.2",
            "RMR with the plain squared error",
            "rmr_mse",
            _mse_cases(),
            _mse_reference,
            forbidden=_LIBRARY,
            hint="β = softmax_k(-||a_t - b_k||² / T); ṽ = β @ b; α = softmax_k(-||ṽ_t - a_k||² / T); τ_k = k / L; "
            "μ = α @ τ; the loss is the mean of (τ_t - μ_t)² over steps and sequences: no σ², no log term.",
            mistakes=[
                ("the similarity has the wrong sign: sim = -||x - y||² (closer = larger)", variant(sign=-1.0)),
                ("the time positions are k / (L - 1); RMR uses τ_k = k / L", variant(denominator="L-1")),
                (
                    "the error is still divided by σ² + 1e-7: that is RMR's main term, which does not grow with the "
                    "distance of a miss; here the plain squared error is wanted",
                    variant(divide=True),
                ),
                (
                    "μ is read from β, the first hop (which report step a_t picks); RMR reads α, where the cycle "
                    "a -> b -> a lands back on a",
                    variant(hops=1),
                ),
                ("the cycle runs b -> a -> b; this exercise's is a -> b -> a", variant(swap=True)),
                argument_ignored(_mse_reference, "temperature", 0.1),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# Exercise 6.3: FMC + RMR on sequences of different lengths
# ----------------------------------------------------------------------------------------------------
def _masked_cases() -> list[Case]:
    specs = [  # lengths, padded length, dim, scale, close, temperature, variance_lambda
        ([5, 3, 4], 5, 8, 0.5, True, 0.1, 1e-3),
        ([4, 4], 4, 6, 0.5, True, 0.3, 1e-3),
        ([2, 6, 3, 5], 6, 8, 0.4, True, 0.2, 1e-3),
        ([3, 2], 4, 4, 0.5, False, 0.5, 0.1),
        ([4, 2, 3], 4, 8, 0.3, False, 1.0, 1e-3),
    ]
    cases = []
    for seed, (lengths, steps, dim, scale, close, tau, lam) in enumerate(specs):
        a, b, text = _sequences(10 + seed, len(lengths), steps, dim, scale, close)
        mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
        label = (
            f"{text} padded to L={steps}; real lengths {lengths} (step_mask True for the first L_s steps; the "
            f"padded steps hold random vectors too){' (no padding)' if min(lengths) == steps else ''}, "
            f"temperature={tau}, variance_lambda={lam}"
        )
        cases.append(Case(label, (a, b, mask), {"temperature": tau, "variance_lambda": lam}, grad=(0, 1)))
    return cases


def _masked_reference(a, b, step_mask, temperature=0.1, variance_lambda=1e-3):
    """cycle_consistency_loss of each sequence cut to its own length, weighted by its length."""
    lengths = step_mask.sum(dim=1).tolist()
    total = sum(
        n
        * cycle_consistency_loss(
            a[s : s + 1, :n], b[s : s + 1, :n], temperature=temperature, variance_lambda=variance_lambda
        )
        for s, n in enumerate(lengths)
    )
    return total / sum(lengths)


def _masked_variant(
    a, b, step_mask, temperature=0.1, variance_lambda=1e-3, *, own_length=True, keys=True, reduce="steps", terms="both"
):
    """FMC + RMR on padded sequences, with switchable mistakes (all defaults: the right answer)."""
    seqs, steps, _ = a.shape
    hide = (~step_mask[:, None, :]) if keys else torch.zeros(seqs, 1, steps, dtype=torch.bool)
    logits = (_l2(a, b) / temperature).masked_fill(hide, float("-inf"))
    fmc = -logits.log_softmax(-1).diagonal(dim1=1, dim2=2)  # [S, L]
    beta = logits.softmax(-1)
    alpha = (_l2(beta @ b, a) / temperature).masked_fill(hide, float("-inf")).softmax(-1)
    length = step_mask.sum(1, keepdim=True).to(a.dtype) if own_length else torch.full((seqs, 1), float(steps))
    times = torch.arange(steps, dtype=a.dtype)[None, :] / length  # [S, L]
    mu = (alpha * times[:, None, :]).sum(-1)
    var = (alpha * (times[:, None, :] - mu[..., None]) ** 2).sum(-1)
    rmr = (times - mu) ** 2 / (var + VARIANCE_EPS) + variance_lambda * torch.log(var + VARIANCE_EPS)
    per_step = {"both": fmc + rmr, "fmc": fmc, "rmr": rmr}[terms]
    per_step = torch.where(step_mask, per_step, torch.zeros_like(per_step))
    if reduce == "steps":
        return per_step.sum() / step_mask.sum()
    if reduce == "sequences":
        return (per_step.sum(1) / step_mask.sum(1)).mean()
    return per_step.mean()  # padded steps counted as zeros


def check_masked_cycle(fn: Callable) -> CheckResult:
    """Grade exercise 6.3: ``fn(a, b, step_mask, temperature=0.1, variance_lambda=1e-3)`` for a, b [S, L, d] and
    step_mask [S, L] must return FMC(a→b) + RMR(a→b→a) of sequences of different lengths, every real step
    counting once (values and gradients)."""

    def variant(**options):
        return lambda a, b, m, temperature=0.1, variance_lambda=1e-3: _masked_variant(
            a, b, m, temperature, variance_lambda, **options
        )

    return run_check(
        Check(
            "6.3",
            "sequences of different lengths",
            "masked_cycle_loss",
            _masked_cases(),
            _masked_reference,
            forbidden=_LIBRARY,
            hint="a sequence of L_s real steps is the library's sequence of length L_s: its padded steps are no "
            "candidates in either softmax (-inf over the keys k), its time positions are τ_k = k / L_s, and the loss "
            "is the mean of FMC_t + RMR_t over the real steps of all sequences together.",
            mistakes=[
                (
                    "the time positions divide by the padded length L; a sequence of L_s steps has τ_k = k / L_s",
                    variant(own_length=False),
                ),
                (
                    "the padded steps are still candidates in the softmaxes (β, α and FMC's); give them -inf over "
                    "the keys k",
                    variant(keys=False),
                ),
                (
                    "each sequence's mean is averaged over the sequences; every real step must count once: sum over "
                    "the real steps, divide by their number",
                    variant(reduce="sequences"),
                ),
                ("the padded steps are counted in the mean; divide by the number of real steps", variant(reduce="all")),
                ("only FMC is there; the loss is FMC(a -> b) + RMR(a -> b -> a)", variant(terms="fmc")),
                ("only RMR is there; the loss is FMC(a -> b) + RMR(a -> b -> a)", variant(terms="rmr")),
                argument_ignored(_masked_reference, "temperature", 0.1),
                argument_ignored(_masked_reference, "variance_lambda", 1e-3),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# The exercise texts; the solutions are solutions/ch06_miss_costs.py, ch06_rmr_mse.py, ch06_masked_cycle.py
# ----------------------------------------------------------------------------------------------------
MISS_COSTS = r"""
*What a miss costs* worked out one case of RMR (Method §6.3): $L = 4$, a leak from the first step.
**Predict first**: the cycle from an *interior* step $t$ of a sequence of $L = 5$ keeps $1 - \varepsilon$ on
$t$ and leaks $\varepsilon$ to one other step $k$. Which of $e_t^2$, $e_t^2/\sigma_t^2$ and
$\lambda \log \sigma_t^2$ depend on whether $k$ is the neighbour or the far end? On which *side* of $t$ the
leak goes?

Then write `miss_costs(L, t, eps, variance_lambda=1e-3)`, a float tensor `[L, 3]` whose row $k$ holds, for
$\alpha_t$ = $1 - \varepsilon$ on step $t$ plus $\varepsilon$ on step $k$ (one-hot on $t$ when $k = t$: nothing
leaks), the three numbers

$$\big(e_t^2,\ \ e_t^2 / (\sigma_t^2 + 10^{-7}),\ \ \lambda \log(\sigma_t^2 + 10^{-7})\big),$$

$\tau_j = j/L$, $\mu_t = \sum_j \alpha_{tj}\tau_j$, $\sigma_t^2 = \sum_j \alpha_{tj}(\tau_j - \mu_t)^2$,
$e_t = \tau_t - \mu_t$, computed from these definitions (not from the formula $\varepsilon/(1-\varepsilon)$:
that is what your numbers should confirm). Check your prediction on `miss_costs(5, 2, 0.2)`, and look at
the row $k = t$: which term is left, and what is its sign?
"""

RMR_MSE = r"""
RMR divides the squared error by $\sigma_t^2$ (Method §6.3, eq. 6.7), and so charges about the same for a
near miss as for a far one (exercise 6.1). Write the variant that does **not**:
`rmr_mse(a, b, temperature=0.1)`, the same cycle $a \to b \to a$ with the L2 similarity ($\beta$, $\tilde v$,
$\alpha$, $\tau_k = k/L$, $\mu_t$ as in the chapter) and the loss

$$\mathcal{L}_\text{RMR-MSE} = \operatorname{mean}_{t,\ \text{sequences}}\ (\tau_t - \mu_t)^2,$$

for `a`, `b` of shape `[S, L, d]`, without a Python loop over sequences.

Then measure what the change does, on the chapter's drifting trajectories (*Which term notices what*):
make step 1 of both sequences a copy of step 0 (the same study repeated right after: a cycle from step 0
can land on either, a **near** miss), and in a second copy make the last step a copy of step 0 (a **far**
miss). **Predict first** which of the two `medst.losses.rmr_loss` charges more, and which `rmr_mse` does;
then compute both for the ordered sequences and the two copies. (Re-arranging the reports alone would show
nothing: RMR$(U \to V \to U)$ does not depend on the order of $V$.) The check compares values and gradients
with the squared `error` of `medst.losses.temporal.rmr_details`.
"""

MASKED_CYCLE = r"""
Patients do not all have $L$ studies. Write `masked_cycle_loss(a, b, step_mask, temperature=0.1,
variance_lambda=1e-3)` for sequences padded to one length: `a`, `b` `[S, L, d]`, `step_mask` `[S, L]` bool,
True for the first $L_s \ge 2$ steps of sequence $s$ (the padded steps hold arbitrary vectors). Return
FMC$(a \to b)$ + RMR$(a \to b \to a)$ (Method §6; L2 similarity, the Huber branch left out), such that

* a sequence of $L_s$ real steps gives exactly the loss of that sequence cut to its $L_s$ steps
  (think about *every* place where $L$ enters: the softmaxes, and the time positions $\tau_k$), and
* every real step of every sequence counts once: the loss is the mean of $\text{FMC}_t + \text{RMR}_t$
  over all real steps of the batch.

No Python loop over sequences. The padded steps must get zero gradient; `torch.where` keeps a NaN or inf of
a padded step out of the result where a multiplication by zero would not. The check compares values and
gradients with `medst.losses.cycle_consistency_loss` on each sequence cut to its length.
"""

CHAPTER = "06_temporal"
EXERCISES = [
    Exercise(
        key="miss-costs",
        chapter=CHAPTER,
        number="6.1",
        title="what a miss costs",
        function="miss_costs",
        prompt=MISS_COSTS,
        solution="ch06_miss_costs",
        checker=check_miss_costs,
        level="easy",
    ),
    Exercise(
        key="rmr-mse",
        chapter=CHAPTER,
        number="6.2",
        title="RMR with the plain squared error",
        function="rmr_mse",
        prompt=RMR_MSE,
        solution="ch06_rmr_mse",
        checker=check_rmr_mse,
        level="medium",
    ),
    Exercise(
        key="masked-cycle",
        chapter=CHAPTER,
        number="6.3",
        title="sequences of different lengths",
        function="masked_cycle_loss",
        prompt=MASKED_CYCLE,
        solution="ch06_masked_cycle",
        checker=check_masked_cycle,
        level="hard",
    ),
]

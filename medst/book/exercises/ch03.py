"""Exercises of chapter 3 (``book/03_global_alignment.ipynb``, Method §4): what the global InfoNCE can reach, and
a variant with several positives per row.

* 3.1 (easy) ``chance_level``: the loss of towers that score every pair alike, with medst's gathered negatives
  over several processes.
* 3.2 (medium) ``lowest_global_loss``: the smallest loss unit vectors allow (the regular simplex), and how the
  temperature sets it; the tests reach it by gradient descent on
  :func:`medst.losses.contrastive.global_alignment_loss`.
* 3.3 (hard) ``patient_infonce``: the InfoNCE where every study of the same patient is a positive (a batch holds
  sequences of one patient's studies, Method §1.1); values and gradients, and it equals
  :func:`~medst.losses.contrastive.global_alignment_loss` when all patients differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from medst.book.exercises.ch01 import tensor_answer
from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, argument_ignored, randn, run_check, unit
from medst.losses.contrastive import gather_with_grad, global_alignment_loss

_FORBIDDEN = (global_alignment_loss, gather_with_grad)


# ----------------------------------------------------------------------------------------------------
# Exercise 3.1: the chance level
# ----------------------------------------------------------------------------------------------------
def _chance_reference(batch_size, processes=1, *, gathered=True, directions=2):
    """Every logit equal: each row's softmax is uniform over its R·B candidates (B without the gather)."""
    candidates = batch_size * (processes if gathered else 1)
    return torch.tensor(directions * math.log(candidates), dtype=torch.float64)


def check_chance_level(fn: Callable) -> CheckResult:
    """Grade exercise 3.1: ``fn(batch_size, processes=1)`` must return the global loss of towers that score every
    image-report pair alike, as each of ``processes`` processes computes it."""

    def variant(**options):
        return lambda batch_size, processes=1: _chance_reference(batch_size, processes, **options)

    settings = [(8, 1), (32, 1), (2, 1), (16, 4), (48, 8), (1, 1), (1, 3)]
    return run_check(
        Check(
            "3.1",
            "the chance level",
            "chance_level",
            [Case(f"batch_size={b}, processes={r}", (b,), {"processes": r}) for b, r in settings],
            _chance_reference,
            forbidden=_FORBIDDEN,
            hint="when all logits are equal, each row's softmax is uniform over its candidates: -log(1 / n) per "
            "direction; with R processes every process scores its B rows against all R·B gathered embeddings.",
            mistakes=[
                (
                    "the other processes' embeddings are left out; medst gathers them, so each row scores R·B "
                    "candidates: 2 ln(R·B)",
                    variant(gathered=False),
                ),
                (
                    "only one direction is counted; the loss adds image -> reports and report -> images",
                    variant(directions=1),
                ),
            ],
        ),
        tensor_answer(fn),
    )


# ----------------------------------------------------------------------------------------------------
# Exercise 3.2: the lowest value
# ----------------------------------------------------------------------------------------------------
def _lowest_reference(batch_size, temperature, *, negative="simplex", directions=2):
    """``directions`` x log(1 + (B - 1) exp((c - 1) / τ)) with c the cosine of the negatives: -1 / (B - 1) on a
    regular simplex (the mistakes: 0, orthogonal; -1, antipodal)."""
    B = batch_size
    if B == 1:
        return torch.tensor(0.0, dtype=torch.float64)
    cosine = {"simplex": -1.0 / (B - 1), "orthogonal": 0.0, "antipodal": -1.0}[negative]
    return torch.tensor(directions * math.log1p((B - 1) * math.exp((cosine - 1.0) / temperature)), dtype=torch.float64)


def check_lowest_global_loss(fn: Callable) -> CheckResult:
    """Grade exercise 3.2: ``fn(batch_size, temperature)`` must return the smallest value the global loss can take
    for ``batch_size`` pairs of unit vectors (in at least batch_size - 1 dimensions)."""

    def variant(**options):
        return lambda batch_size, temperature: _lowest_reference(batch_size, temperature, **options)

    settings = [(8, 1.0), (4, 0.5), (2, 1.0), (16, 2.0), (3, 0.25), (32, 0.5), (8, 0.07), (1, 1.0)]
    return run_check(
        Check(
            "3.2",
            "the lowest global loss",
            "lowest_global_loss",
            [Case(f"batch_size={b}, temperature={t}", (b, t)) for b, t in settings],
            _lowest_reference,
            forbidden=_FORBIDDEN,
            hint="at the minimum every image lies on its own report (<v_i, t_i> = 1) and the negatives are as far "
            "apart as B unit vectors can all be: the sum of all B^2 cosines is ||sum_i t_i||^2 >= 0, so their mean "
            "off-diagonal cosine is at least -1 / (B - 1), reached by a regular simplex; then each row gives "
            "log(1 + (B - 1) exp(-B / ((B - 1) τ))), and there are two directions.",
            mistakes=[
                (
                    "the negatives are orthogonal (cosine 0); B unit vectors can be further apart: a regular simplex "
                    "has cosine -1 / (B - 1) between any two",
                    variant(negative="orthogonal"),
                ),
                (
                    "the negatives have cosine -1; only two vectors can be opposite: the lowest common cosine of B "
                    "unit vectors is -1 / (B - 1)",
                    variant(negative="antipodal"),
                ),
                ("only one direction is counted; the loss adds both", variant(directions=1)),
            ],
        ),
        tensor_answer(fn),
    )


# ----------------------------------------------------------------------------------------------------
# Exercise 3.3: several positives per row
# ----------------------------------------------------------------------------------------------------
def _patient_reference(img: Tensor, txt: Tensor, patient: Tensor, temperature: float = 0.07) -> Tensor:
    """-mean over each row's positives of log softmax, averaged over rows, for both directions."""
    logits = img @ txt.T / temperature
    same = patient[:, None] == patient[None, :]
    per_row = [-(F.log_softmax(scores, dim=1) * same).sum(dim=1) / same.sum(dim=1) for scores in (logits, logits.T)]
    return per_row[0].mean() + per_row[1].mean()


def _patient_variant(
    img, txt, patient, temperature=0.07, *, form="out", reduce="mean", directions=("i2t", "t2i"), combine="sum"
):
    """The loss with switchable mistakes (for hints only)."""
    logits = img @ txt.T / temperature
    same = patient[:, None] == patient[None, :]
    terms = []
    for name, scores in (("i2t", logits), ("t2i", logits.T)):
        if name not in directions:
            continue
        if form == "in":  # -log of the summed probability of the positives
            row = -torch.logsumexp(scores.masked_fill(~same, float("-inf")), 1) + torch.logsumexp(scores, 1)
        elif form == "diagonal":  # patient ids ignored: the plain global loss
            row = -torch.diagonal(F.log_softmax(scores, 1))
        elif form == "exclusive":  # each positive against the negatives only
            negatives = torch.logsumexp(scores.masked_fill(same, float("-inf")), 1, keepdim=True)
            log_p = scores - torch.logaddexp(scores, negatives)
            row = -(log_p * same).sum(1) / (same.sum(1) if reduce == "mean" else 1)
        else:
            log_p = F.log_softmax(scores, 1)
            row = -(log_p * same).sum(1) / (same.sum(1) if reduce == "mean" else 1)
        terms.append(row.mean())
    total = sum(terms)
    return total / len(terms) if combine == "mean" else total


def _patient_cases() -> list[Case]:
    settings = [  # patient ids, d, temperature, note
        ([0, 0, 1, 2, 2, 2], 8, 0.07, "two sequences and a single study"),
        ([3, 1, 3, 1, 0, 2, 3], 16, 0.5, "same-patient studies not next to each other"),
        ([0, 1, 2, 3, 4], 8, 0.07, "all patients differ: the global loss of chapter 3"),
        ([5, 5, 5, 5], 4, 1.0, "one patient only"),
        ([7], 4, 0.07, "one pair"),
        ([0, 0, 0, 0, 1, 1, 1, 1, 2, 3], 16, 0.1, "two sequences of 4 studies and two singles, as a Med-ST batch"),
    ]
    cases = []
    for seed, (ids, dim, tau, note) in enumerate(settings):
        B = len(ids)
        img = unit(B, dim, seed=700 + seed)
        txt = F.normalize(img + randn(B, dim, seed=720 + seed), dim=-1) if seed % 2 else unit(B, dim, seed=740 + seed)
        label = f"img, txt [B={B}, d={dim}] unit vectors (seed {seed}), patient={ids} ({note}), temperature={tau}"
        cases.append(Case(label, (img, txt, torch.tensor(ids)), {"temperature": tau}, grad=(0, 1)))
    return cases


def check_patient_infonce(fn: Callable) -> CheckResult:
    """Grade exercise 3.3: ``fn(img, txt, patient, temperature=0.07)`` must return the global InfoNCE with every
    pair of the same patient a positive (values and gradients)."""

    def variant(**options):
        return lambda img, txt, patient, temperature=0.07: _patient_variant(img, txt, patient, temperature, **options)

    return run_check(
        Check(
            "3.3",
            "several positives per row",
            "patient_infonce",
            _patient_cases(),
            _patient_reference,
            forbidden=_FORBIDDEN,
            hint="s = img @ txt.T / τ; P(i) = the pairs of row i's patient (i included); row i's loss is "
            "-(1/|P(i)|) sum_{p in P(i)} log softmax_j(s_ij)_p; average over rows, do the same for the columns "
            "(s.T), and add the two directions.",
            mistakes=[
                (
                    "this is -log of the summed probability of the positives (the positives pooled inside the log); "
                    "the exercise averages -log softmax over the positives",
                    variant(form="in"),
                ),
                ("the positives' terms are summed; average them (divide by |P(i)|)", variant(reduce="sum")),
                (
                    "each positive is scored against the negatives only; the other positives stay in the softmax's "
                    "denominator",
                    variant(form="exclusive"),
                ),
                ("the patient ids are ignored: only the diagonal is positive", variant(form="diagonal")),
                ("only the image -> report direction is there; add the columns (s.T)", variant(directions=("i2t",))),
                ("only the report -> image direction is there; add the rows (s)", variant(directions=("t2i",))),
                ("the two directions are averaged; Med-ST adds them", variant(combine="mean")),
                argument_ignored(_patient_reference, "temperature", 0.07),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# The exercise texts; the solutions are solutions/ch03_chance_level.py, ch03_lowest_loss.py,
# ch03_patient_infonce.py
# ----------------------------------------------------------------------------------------------------
CHANCE_LEVEL = r"""
The training cell compares the loss with $2 \ln B$, the value of towers that score every pair of the batch alike.
With several processes, medst gathers every process's embeddings (the cell "More negatives with several
processes"). Write `chance_level(batch_size, processes=1)`: the global loss that **each process** computes
when every image-report similarity is the same, for $B$ = `batch_size` pairs per process and $R$ = `processes`
processes. Does the temperature matter? Does the published code (no gather) have the same chance level?
"""

LOWEST_LOSS = r"""
How low can $\mathcal{L}_\text{global}$ go? Not to 0: the embeddings are unit vectors, so the logits are bounded
by $\pm 1/\tau$. Write `lowest_global_loss(batch_size, temperature)`: the smallest value the loss can take for
$B$ = `batch_size` pairs of unit vectors in $d \ge B - 1$ dimensions.

Hints: at the minimum each image sits on its own report ($\langle v_i, t_i \rangle = 1$), and the negatives
should be as far from the positives as unit vectors allow. Can $B$ unit vectors all be orthogonal? All opposite?
Use $\lVert \sum_i t_i \rVert^2 \ge 0$ to bound the mean cosine between different vectors, and the convexity
of $\log \sum \exp$ to see that equal negatives are best.

Then look at your formula: what is the floor at $\tau = 0.07$ for a batch of 16, and at $\tau = 1$? What does
a large temperature do to what the loss can ask of the towers? Check your value numerically: a few hundred Adam
steps on `global_alignment_loss` over free unit vectors come down to it, and not below.
"""

PATIENT_INFONCE = r"""
A Med-ST batch holds $S$ sequences of $L$ studies of one patient each (Method §1.1). To the global loss, the
other studies of the same patient are negatives, although their reports describe the same chest. Write
`patient_infonce(img, txt, patient, temperature=0.07)`, the InfoNCE where **every pair of the same patient is a
positive**: with `patient` `[B]` the patient id of each pair, $P(i) = \{j : \text{patient}_j = \text{patient}_i\}$
($i$ included) and $s_{ij} = \langle v_i, t_j\rangle / \tau$,

$$\ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)} \log \frac{e^{s_{ip}}}{\sum_j e^{s_{ij}}},$$

averaged over the rows, plus the same over the columns (report $\to$ images), the two directions **added**.
When all patients differ it must equal the loss of this chapter. No Python loop over rows. The check compares
values and gradients with medst's reference, same-patient pairs next to each other or not, one patient only
and one pair included.
"""

CHAPTER = "03_global_alignment"
EXERCISES = [
    Exercise(
        key="chance-level",
        chapter=CHAPTER,
        number="3.1",
        title="the chance level",
        function="chance_level",
        prompt=CHANCE_LEVEL,
        solution="ch03_chance_level",
        checker=check_chance_level,
        level="easy",
    ),
    Exercise(
        key="lowest-loss",
        chapter=CHAPTER,
        number="3.2",
        title="the lowest global loss",
        function="lowest_global_loss",
        prompt=LOWEST_LOSS,
        solution="ch03_lowest_loss",
        checker=check_lowest_global_loss,
        level="medium",
    ),
    Exercise(
        key="patient-infonce",
        chapter=CHAPTER,
        number="3.3",
        title="several positives per row",
        function="patient_infonce",
        prompt=PATIENT_INFONCE,
        solution="ch03_patient_infonce",
        checker=check_patient_infonce,
        level="hard",
    ),
]

"""Exercise 3.1 (chapter 3, Method §4): the symmetric image-report InfoNCE.

The checker compares values and gradients of the reader's ``global_loss`` with
:func:`medst.losses.contrastive.global_alignment_loss` on random unit vectors (one pair included).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, argument_ignored, randn, run_check, unit
from medst.losses.contrastive import global_alignment_loss


def _global_cases() -> list[Case]:
    cases = []
    for seed, (batch, dim, tau) in enumerate([(8, 16, 0.07), (5, 4, 0.07), (6, 8, 0.5), (2, 8, 1.0), (1, 4, 0.07)]):
        label = f"img, txt [B={batch}, d={dim}] random unit vectors (seed {seed}), temperature={tau}"
        if batch == 1:
            label += " (one pair: no negatives, the loss is 0)"
        cases.append(
            Case(
                label,
                (unit(batch, dim, seed=seed), unit(batch, dim, seed=50 + seed)),
                {"temperature": tau},
                grad=(0, 1),
            )
        )
    paired = unit(4, 8, seed=9)
    cases.append(
        Case(
            "img, txt [B=4, d=8] with txt close to img (a well-aligned batch), temperature=0.07",
            (paired, F.normalize(paired + 0.1 * randn(4, 8, seed=10), dim=-1)),
            {"temperature": 0.07},
            grad=(0, 1),
        )
    )
    return cases


def _global_variant(img, txt, temperature=0.07, *, directions=("i2t", "t2i"), reduce="sum", scale=True):
    logits = img @ txt.T / (temperature if scale else 1.0)
    targets = torch.arange(len(img))
    terms = {"i2t": F.cross_entropy(logits, targets), "t2i": F.cross_entropy(logits.T, targets)}
    total = sum(terms[d] for d in directions)
    return total / len(directions) if reduce == "mean" else total


def check_global_loss(fn: Callable) -> CheckResult:
    """Grade exercise 3.1: ``fn(img, txt, temperature=0.07)`` for img, txt [B, d] must return the scalar
    :func:`medst.losses.contrastive.global_alignment_loss` (values and gradients)."""

    def variant(**options):
        return lambda img, txt, temperature=0.07: _global_variant(img, txt, temperature, **options)

    return run_check(
        Check(
            "3.1",
            "the image-report InfoNCE",
            "global_loss",
            _global_cases(),
            global_alignment_loss,
            hint="s = img @ txt.T / temperature; the positives are on the diagonal; add the cross-entropy over "
            "rows (image -> reports) and over columns (report -> images), each a mean over the batch.",
            mistakes=[
                ("the two directions are averaged; Med-ST adds them", variant(reduce="mean")),
                ("only the image -> report direction is there; add CE(s.T, I)", variant(directions=("i2t",))),
                ("only the report -> image direction is there; add CE(s, I)", variant(directions=("t2i",))),
                ("the similarities are not divided by the temperature", variant(scale=False)),
                argument_ignored(global_alignment_loss, "temperature", 0.07),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# The exercise text; the solution is solutions/ch03_global_loss.py
# ----------------------------------------------------------------------------------------------------
GLOBAL_LOSS = r"""
Write `global_loss(img, txt, temperature=0.07)` for L2-normalised image and report embeddings
`img`, `txt` of shape `[B, d]` (row $i$ of both belongs to pair $i$):

$$s_{ij} = \frac{\langle v_i, t_j\rangle}{\tau}, \qquad
\mathcal{L}_\text{global} = \mathrm{CE}(s, I) + \mathrm{CE}(s^\top, I),$$

each cross-entropy averaged over the batch, the two directions **added**. The check compares values
and gradients with `medst.losses.contrastive.global_alignment_loss`, including a batch of one pair.
"""

CHAPTER = "03_global_alignment"
EXERCISES = [
    Exercise(
        key="global-loss",
        chapter=CHAPTER,
        number="3.1",
        title="the image-report InfoNCE",
        function="global_loss",
        prompt=GLOBAL_LOSS,
        solution="ch03_global_loss",
        checker=check_global_loss,
    ),
]

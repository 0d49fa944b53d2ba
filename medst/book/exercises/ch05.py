"""Exercise 5.1 (chapter 5, Method §5): the word side of the modality-weighted local alignment.

The checker compares values and gradients of the reader's ``word_side_loss`` with ``loss_word`` of
:class:`medst.losses.local.LocalAlignment` (all tokens valid).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, argument_ignored, run_check, unit
from medst.losses.local import LocalAlignment


def _local_cases() -> list[Case]:
    cases = []
    for seed, (batch, words, patches, dim, tau) in enumerate(
        [(2, 5, 8, 8, 0.1), (3, 4, 6, 8, 0.5), (1, 6, 4, 8, 0.1), (2, 1, 3, 8, 0.1)]
    ):
        torch.manual_seed(300 + seed)
        weighting = nn.MultiheadAttention(dim, 1, batch_first=True)
        label = (
            f"words [B={batch}, W={words}, d={dim}], patches [B={batch}, P={patches}, d={dim}] random unit "
            f"vectors (seed {seed}), temperature={tau}{' (a single word)' if words == 1 else ''}"
        )
        cases.append(
            Case(
                label,
                (unit(batch, words, dim, seed=seed), unit(batch, patches, dim, seed=40 + seed), weighting),
                {"temperature": tau},
                grad=(0, 1),
            )
        )
    return cases


def _word_side_variant(
    words, patches, weighting, temperature=0.1, *, renormalise=True, weighted=True, directions=("rows", "cols")
):
    attn = (words @ patches.transpose(1, 2) / temperature).softmax(-1)
    context = attn @ patches
    if renormalise:
        context = F.normalize(context, dim=-1)
    inter = F.normalize(words * context, dim=-1)
    _, omega = weighting(inter.mean(1, keepdim=True), inter, inter, need_weights=True)
    omega = omega[:, 0] if weighted else torch.full_like(omega[:, 0], 1.0 / words.shape[1])
    sim = words @ context.transpose(1, 2) / temperature
    targets = torch.arange(words.shape[1]).expand(words.shape[0], -1)
    terms = {
        "rows": (omega * F.cross_entropy(sim.transpose(1, 2), targets, reduction="none")).sum(1).mean(),
        "cols": (omega * F.cross_entropy(sim, targets, reduction="none")).sum(1).mean(),
    }
    return sum(terms[d] for d in directions) / len(directions)


def check_local_word_side(fn: Callable) -> CheckResult:
    """Grade exercise 5.1: ``fn(words, patches, weighting, temperature=0.1)`` for words [B, W, d], patches
    [B, P, d] and a one-head ``nn.MultiheadAttention`` must return the scalar word-side loss ``L_word`` of
    :class:`medst.losses.local.LocalAlignment` (all tokens valid; values and gradients)."""

    def reference(words, patches, weighting, temperature=0.1):
        local = LocalAlignment(words.shape[-1], temperature)
        local.word_weighting = weighting
        return local(words, patches, return_details=True).loss_word

    def variant(**options):
        return lambda w, p, m, temperature=0.1: _word_side_variant(w, p, m, temperature, **options)

    return run_check(
        Check(
            "5.1",
            "the word side of the local alignment",
            "word_side_loss",
            _local_cases(),
            reference,
            forbidden=(LocalAlignment,),
            hint="a = softmax(words @ patches^T / τ) over patches; c = normalise(a @ patches); "
            "e = normalise(words * c); ω = weights of weighting(query=mean_i e_i, key=value=e); m = words @ c^T / τ; "
            "the loss is the mean over the batch of Σ_i ω_i CE(m_i,:, i) and of Σ_i ω_i CE(m_:,i, i), averaged.",
            mistakes=[
                ("the context c_i is not re-normalised on the word side", variant(renormalise=False)),
                ("the words are not weighted by ω (a plain mean over words)", variant(weighted=False)),
                (
                    "only the row direction CE(m_i,:, i) is there; average it with the column direction",
                    variant(directions=("rows",)),
                ),
                (
                    "only the column direction CE(m_:,i, i) is there; average it with the row direction",
                    variant(directions=("cols",)),
                ),
                argument_ignored(reference, "temperature", 0.1),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# The exercise text; the solution is solutions/ch05_word_side_loss.py
# ----------------------------------------------------------------------------------------------------
WORD_SIDE_LOSS = r"""
Write `word_side_loss(words, patches, weighting, temperature=0.1)`, the word side of the
modality-weighted local alignment for one batch without padding: `words` `[B, W, d]` and
`patches` `[B, P, d]` are L2-normalised, `weighting` is a one-head `nn.MultiheadAttention`.

1. $a_{ij} = \mathrm{softmax}_j(\langle w_i, p_j\rangle/\tau_l)$ and
   $c_i = \mathrm{normalise}(\sum_j a_{ij} p_j)$;
2. $e_i = \mathrm{normalise}(w_i \odot c_i)$;
3. $\omega$ = the attention weights of `weighting(q, e, e)` with $q = \mathrm{mean}_i\, e_i$,
   renormalised to sum 1;
4. $m_{ik} = \langle w_i, c_k\rangle/\tau_l$ and
   $\mathcal{L}_\text{word} = \tfrac12\big(\sum_i \omega_i \mathrm{CE}(m_{i,:}, i)
   + \sum_i \omega_i \mathrm{CE}(m_{:,i}, i)\big)$, each sum averaged over the batch.

The check compares values and gradients with `LocalAlignment(...).loss_word`.
"""

CHAPTER = "05_local_alignment"
EXERCISES = [
    Exercise(
        key="local-word-side",
        chapter=CHAPTER,
        number="5.1",
        title="the word side of the local alignment",
        function="word_side_loss",
        prompt=WORD_SIDE_LOSS,
        solution="ch05_word_side_loss",
        checker=check_local_word_side,
    ),
]

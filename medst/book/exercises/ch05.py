"""Exercises 5.1 and 5.2 (chapter 5, Method §5): the masked word side, and the collapse of the learned weights.

* 5.1 (medium) ``masked_word_side_loss``: the word side of the local alignment on a padded batch (padded words,
  studies without a lateral view), compared in values and gradients with ``loss_word`` of
  :class:`medst.losses.local.LocalAlignment` given ``word_mask`` and ``patch_mask``.
* 5.2 (hard) ``word_weight_collapse``: a few steps of plain SGD on the word-weighting attention alone, on a
  small fixed input, the largest word weight after each step; with an entropy bonus as a remedy. Compared with
  the same steps taken through ``LocalAlignment`` (``return_details=True``: ``loss_word`` and ``word_weights``).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, argument_ignored, run_check, unit
from medst.losses.local import (
    LocalAlignment,
    cross_attend,
    masked_mean,
    modality_weights,
    uniform_weights,
    weight_stats,
    weighted_token_infonce,
)

_LIBRARY = (LocalAlignment, cross_attend, masked_mean, modality_weights, uniform_weights, weighted_token_infonce)


def _weighting(dim: int, seed: int, dtype: torch.dtype = torch.float32) -> nn.MultiheadAttention:
    """A one-head weighting attention with its own initialisation (the global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.MultiheadAttention(dim, 1, batch_first=True).to(dtype)


def _prefix_mask(lengths: list[int], size: int) -> Tensor:
    """[B, size] bool: True for the first lengths[b] slots of row b."""
    return torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]


# ----------------------------------------------------------------------------------------------------
# Exercise 5.1: the word side with padded words and missing lateral views
# ----------------------------------------------------------------------------------------------------
def _masked_cases() -> list[Case]:
    specs = [  # words per row, patches per view, which rows have a lateral, temperature
        ([6, 4], 4, [True, True], 0.1, "pair 1 has 2 padded words"),
        ([5, 5], 4, [True, False], 0.5, "pair 1 has no lateral view (its last 4 patch slots are padding)"),
        ([7, 3, 5], 4, [False, True, False], 0.1, "padded words and missing lateral views"),
        ([1, 4], 3, [True, True], 0.1, "pair 0 has a single word"),
        ([5], 2, [True], 0.1, "no padding at all"),
    ]
    cases = []
    for seed, (lengths, n, has_lateral, tau, what) in enumerate(specs):
        batch, words, patches, dim = len(lengths), max(lengths) + (1 if seed % 2 else 0), 2 * n, 8
        word_mask = _prefix_mask(lengths, words)
        patch_mask = torch.ones(batch, patches, dtype=torch.bool)
        patch_mask[:, n:] = torch.tensor(has_lateral)[:, None]
        label = (
            f"words [B={batch}, W={words}, d={dim}] with {lengths} real words, patches [B={batch}, P={patches}, "
            f"d={dim}] ({n} frontal + {n} lateral slots, lateral present: {has_lateral}); {what}; padding slots "
            f"hold random unit vectors; temperature={tau}"
        )
        cases.append(
            Case(
                label,
                (
                    unit(batch, words, dim, seed=seed),
                    unit(batch, patches, dim, seed=40 + seed),
                    _weighting(dim, 300 + seed),
                    word_mask,
                    patch_mask,
                ),
                {"temperature": tau},
                grad=(0, 1),
            )
        )
    return cases


def _masked_reference(words, patches, weighting, word_mask, patch_mask, temperature=0.1, *, mask_words=True):
    with torch.random.fork_rng(devices=[]):  # LocalAlignment's own attentions draw their initial weights
        local = LocalAlignment(words.shape[-1], temperature, mask_words=mask_words)
    local.word_weighting = weighting
    return local(words, patches, word_mask, patch_mask, return_details=True).loss_word


def _masked_variant(
    words, patches, weighting, word_mask, patch_mask, temperature=0.1, *, keys=True, query=True, weights=True, ce=True
):
    """The word side with one of its masks left out (each switch False: that mask is missing)."""
    scores = words @ patches.transpose(1, 2) / temperature
    if keys:
        scores = scores.masked_fill(~patch_mask[:, None, :], float("-inf"))
    context = F.normalize(scores.softmax(-1) @ patches, dim=-1)
    inter = F.normalize(words * context, dim=-1)
    valid = word_mask.to(words.dtype)
    mean = (inter * valid[..., None]).sum(1) / valid.sum(1, keepdim=True) if query else inter.mean(1)
    _, omega = weighting(
        mean[:, None], inter, inter, key_padding_mask=~word_mask if weights else None, need_weights=True
    )
    omega = omega[:, 0]
    sim = words @ context.transpose(1, 2) / temperature
    if ce:
        eye = torch.eye(sim.shape[1], dtype=torch.bool)
        sim = sim.masked_fill(~((word_mask[:, :, None] & word_mask[:, None, :]) | eye), float("-inf"))
    rows = -sim.log_softmax(2).diagonal(dim1=1, dim2=2)
    cols = -sim.log_softmax(1).diagonal(dim1=1, dim2=2)
    return ((omega * rows).sum(1).mean() + (omega * cols).sum(1).mean()) / 2


def check_masked_word_side(fn: Callable) -> CheckResult:
    """Grade exercise 5.1: ``fn(words, patches, weighting, word_mask, patch_mask, temperature=0.1)`` for words
    [B, W, d], patches [B, P, d], masks [B, W] and [B, P] must return the scalar word-side loss ``L_word`` of
    :class:`medst.losses.local.LocalAlignment` with those masks (values and gradients)."""

    def variant(**options):
        return lambda w, p, m, wm, pm, temperature=0.1: _masked_variant(w, p, m, wm, pm, temperature, **options)

    return run_check(
        Check(
            "5.1",
            "the word side with padding",
            "masked_word_side_loss",
            _masked_cases(),
            _masked_reference,
            forbidden=_LIBRARY,
            hint="a masked token must enter nowhere: patches with patch_mask False get -inf before the word->patch "
            "softmax; the mean query averages the real words only; the weighting attention gets "
            "key_padding_mask=~word_mask; in m_ik = <w_i, c_k>/τ every entry in a padded row or column is -inf "
            "except the diagonal (so a padded word's own CE is 0, not NaN), and the weighted sums then skip it.",
            mistakes=[
                (
                    "padded words are not masked at all on the word side: this is the published word side "
                    "(LocalAlignment(mask_words=False)); the book keeps them out of the query, the weights and "
                    "the cross-entropies",
                    lambda w, p, m, wm, pm, temperature=0.1: _masked_reference(
                        w, p, m, wm, pm, temperature, mask_words=False
                    ),
                ),
                (
                    "the missing lateral patches are still keys of the word->patch attention; give them -inf "
                    "before the softmax",
                    variant(keys=False),
                ),
                (
                    "the mean query averages over the padding slots too; average the real words only",
                    variant(query=False),
                ),
                (
                    "the padded words are keys of the weighting attention (pass key_padding_mask=~word_mask), "
                    "so they take some of the weight",
                    variant(weights=False),
                ),
                (
                    "the padded words are still negatives in the cross-entropies; mask their rows and columns of "
                    "m (except the diagonal)",
                    variant(ce=False),
                ),
                argument_ignored(_masked_reference, "temperature", 0.1),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# Exercise 5.2: the collapse of the learned word weights, and an entropy bonus against it
# ----------------------------------------------------------------------------------------------------
def _collapse_cases() -> list[Case]:
    specs = [  # batch, words, patches, dim, steps, lr, entropy_weight, what
        (2, 6, 8, 8, 30, 5.0, 0.0, "the published learned weights"),
        (2, 6, 8, 8, 30, 5.0, 1.0, "the same input with an entropy bonus"),
        (3, 4, 6, 8, 12, 2.0, 0.2, "a small entropy bonus"),
        (1, 5, 4, 4, 0, 5.0, 0.0, "no step at all: only the weights before training"),
    ]
    cases = []
    for seed, (batch, words, patches, dim, steps, lr, gamma, what) in enumerate(specs):
        seed = 0 if seed == 1 else seed  # cases 0 and 1: the same input, without and with the bonus
        label = (
            f"words [B={batch}, W={words}, d={dim}], patches [B={batch}, P={patches}, d={dim}] random unit vectors "
            f"in float64 (seed {seed}), steps={steps}, lr={lr}, entropy_weight={gamma} ({what})"
        )
        cases.append(
            Case(
                label,
                (
                    unit(batch, words, dim, seed=500 + seed).double(),
                    unit(batch, patches, dim, seed=540 + seed).double(),
                    _weighting(dim, 600 + seed, torch.float64),
                ),
                {"steps": steps, "lr": lr, "entropy_weight": gamma},
            )
        )
    return cases


def _on_a_copy(fn: Callable) -> Callable:
    """``fn`` called with copies of its module arguments and with autograd on. The copies: training them in place
    changes nothing for the next call (the reader's function, the reference and the mistake models all start
    from the same weights). Autograd: the framework runs the mistake models under ``torch.no_grad``, where
    nothing would train."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with torch.enable_grad():
            return fn(*[copy.deepcopy(a) if isinstance(a, nn.Module) else a for a in args], **kwargs)

    return call


def _collapse_variant(
    words,
    patches,
    weighting,
    steps=30,
    lr=5.0,
    entropy_weight=0.0,
    *,
    sign=1.0,
    detach=False,
    optimizer="sgd",
    reduce="mean",
    curve="all",
):
    """Reference (all options default), through LocalAlignment: SGD on the word weighting alone, the largest
    word weight (mean over pairs) before training and after every step."""
    with torch.random.fork_rng(devices=[]):  # LocalAlignment's own attentions draw their initial weights
        local = LocalAlignment(words.shape[-1], weighting="detached" if detach else "learned").to(words.dtype)
    local.word_weighting = weighting
    params = [p for p in weighting.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
    largest = []
    for step in range(steps + 1):
        out = local(words, patches, return_details=True)
        omega = out.word_weights  # [B, W]
        top = omega.detach().max(dim=1).values
        largest.append(top.mean() if reduce == "mean" else top[0])
        if step == steps:
            break
        entropy = -(omega * omega.log()).sum(dim=1).mean()
        loss = out.loss_word - sign * entropy_weight * entropy
        opt.zero_grad()
        if loss.requires_grad:
            loss.backward()
            opt.step()
    result = torch.stack(largest)
    return {"all": result, "no first": result[1:], "no last": result[:-1]}[curve]


def check_word_weight_collapse(fn: Callable) -> CheckResult:
    """Grade exercise 5.2: ``fn(words, patches, weighting, steps=30, lr=5.0, entropy_weight=0.0)`` must return
    the largest word weight (mean over pairs) before and after each of ``steps`` SGD steps on the weighting
    attention alone, loss ``L_word - entropy_weight * H(ω)`` ([steps + 1])."""

    def variant(**options):
        return lambda w, p, m, steps=30, lr=5.0, entropy_weight=0.0: _collapse_variant(
            w, p, m, steps, lr, entropy_weight, **options
        )

    check = Check(
        "5.2",
        "the collapse of the learned weights, and a remedy",
        "word_weight_collapse",
        _collapse_cases(),
        _collapse_variant,
        forbidden=(*_LIBRARY, weight_stats),
        hint="train a copy of `weighting` with torch.optim.SGD(its parameters, lr) and nothing else (no momentum, "
        "the words and patches fixed); at each step: ω and L_word as in exercise 5.1 (no padding), "
        "H = mean over pairs of -Σ_i ω_i log ω_i, loss = L_word - entropy_weight * H, backward, step. Record "
        "mean over pairs of max_i ω_i before the first step and after every step: steps + 1 values.",
        mistakes=[
            (
                "ω is detached (or computed under no_grad), so nothing trains and the curve is flat: that is the "
                "book's remedy (weighting='detached'); here the published weights must get the loss's gradient",
                variant(detach=True),
            ),
            (
                "the entropy term has the wrong sign: a bonus for spread weights is SUBTRACTED from the loss "
                "(loss = L_word - entropy_weight * H)",
                variant(sign=-1.0),
            ),
            (
                "the optimiser is Adam; the exercise uses plain SGD (torch.optim.SGD(params, lr=lr))",
                variant(optimizer="adam"),
            ),
            (
                "the largest weight of the first pair only; record the mean over the pairs of max_i ω_i",
                variant(reduce="first"),
            ),
            ("the curve misses the weights before the first step (steps + 1 values)", variant(curve="no first")),
            ("the curve misses the weights after the last step (steps + 1 values)", variant(curve="no last")),
        ],
    )
    if not callable(fn):
        return run_check(check, fn)
    check.reference = _on_a_copy(check.reference)
    check.mistakes = [(hint, _on_a_copy(wrong)) for hint, wrong in check.mistakes]
    return run_check(check, _on_a_copy(fn))


# ----------------------------------------------------------------------------------------------------
# The exercise texts; the solutions are solutions/ch05_masked_word_side.py, ch05_weight_collapse.py
# ----------------------------------------------------------------------------------------------------
MASKED_WORD_SIDE = r"""
The chapter wrote the word side for one pair without padding. In a batch, reports have padded word slots
and some studies have no lateral view (their lateral patch slots are padding). Write
`masked_word_side_loss(words, patches, weighting, word_mask, patch_mask, temperature=0.1)`: the word side
$\mathcal{L}_\text{word}$ for a batch, `words` `[B, W, d]`, `patches` `[B, P, d]` (L2-normalised),
`word_mask` `[B, W]` and `patch_mask` `[B, P]` bool (True = real token), `weighting` a one-head
`nn.MultiheadAttention(d, 1, batch_first=True)`.

A padded pair must give **exactly** the loss of the same pair without its padding, and the padding slots
must get exactly zero gradient (Method §5: a masked token enters nowhere). Find every place where a masked
token could enter the four steps of the chapter (which softmaxes, which mean, which sums) and keep it out.
Mind the rows of the cross-entropy that belong to padded words: a row with no allowed entry is a NaN.
The check compares values and gradients with `LocalAlignment(...).loss_word` given both masks, on batches
with padded words, missing laterals, both, and a report of a single word.
"""

WEIGHT_COLLAPSE = r"""
The chapter says the learned weights collapse because $\partial \mathcal{L}/\partial\omega_i = \mathrm{CE}_i$
moves weight to the easiest token (Method §5). Measure it on a small fixed input, then try a remedy of your
own: an **entropy bonus** that pays the weighting attention for spreading its weights,
$\mathcal{L} = \mathcal{L}_\text{word} - \gamma\, H(\omega)$ with $H(\omega) = -\sum_i \omega_i \log \omega_i$
averaged over the pairs.

Write `word_weight_collapse(words, patches, weighting, steps=30, lr=5.0, entropy_weight=0.0)`: train a copy
of `weighting` (only its parameters; `words` and `patches` stay fixed; no padding) with plain
`torch.optim.SGD(..., lr=lr)` for `steps` steps on that loss, $\gamma$ = `entropy_weight`, and return the
largest word weight $\max_i \omega_i$, averaged over the pairs, before the first step and after every step
(a tensor of `steps + 1` values). $\omega$ and $\mathcal{L}_\text{word}$ are those of the chapter's word side
(exercise 5.1 without masks).

**Predict first**, for 6 words: where does the curve start, and where does it go with $\gamma = 0$?
Then run your function on `words`, `patches` of the chapter's size with $\gamma = 0$, $0.2$ and $1$ and
compare the last values with $1/W$. What would the curve of the book's remedy (`weighting="detached"`) be,
and why does it need no experiment? The check compares the curves with the same steps taken through
`LocalAlignment`.
"""

CHAPTER = "05_local_alignment"
EXERCISES = [
    Exercise(
        key="masked-word-side",
        chapter=CHAPTER,
        number="5.1",
        title="the word side with padding",
        function="masked_word_side_loss",
        prompt=MASKED_WORD_SIDE,
        solution="ch05_masked_word_side",
        checker=check_masked_word_side,
        level="medium",
    ),
    Exercise(
        key="weight-collapse",
        chapter=CHAPTER,
        number="5.2",
        title="the collapse of the learned weights, and a remedy",
        function="word_weight_collapse",
        prompt=WEIGHT_COLLAPSE,
        solution="ch05_weight_collapse",
        checker=check_word_weight_collapse,
        level="hard",
    ),
]

"""Exercises of chapter 2 (``book/02_encoders.ipynb``, Method §2-3): tokens, words and the heads' BatchNorm.

* 2.1 (easy) ``move_tokens``: how many tokens, and attention pairs, the image tower runs for a batch, in medst
  and in the published code (Method §3.1, §3.4); checked against the formula, which the tests check against
  a running :class:`medst.models.vision.MoVE`.
* 2.2 (medium) ``merge_words_max``: the word merge with a max over the pieces instead of the sum (the chapter's
  merge, with a reduction that has a trap: the slots' initial zeros must not take part); checked against
  :func:`medst.models.text.merge_word_pieces`'s grouping of pieces into words, values and gradients, on toy
  reports with edge cases.
* 2.3 (hard) ``masked_batch_norm``: BatchNorm with statistics over the real tokens only, as
  :class:`medst.models.heads.LocalHead` normalises (:func:`medst.models.norm.batch_norm_rows`), in training
  and evaluation mode, with its running statistics and its gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from medst.book.exercises.ch01 import CopyCase, tensor_answer
from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, generator, randn, run_check
from medst.models.heads import LocalHead
from medst.models.norm import GlobalBatchNorm1d, batch_norm_rows
from medst.models.text import merge_word_pieces
from medst.models.vision import MoVE


# ----------------------------------------------------------------------------------------------------
# Exercise 2.1: tokens of the image tower
# ----------------------------------------------------------------------------------------------------
def _tokens_reference(
    image_size, patch_size, has_lateral: Tensor, *, cls=1, lateral_cls=0, square=True, fake_lateral=True, pairs="study"
):
    """Method §3.1 and §3.4 as a formula; the keyword options are the mistake models' switches."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    n = (height // patch_size) * (width // patch_size) if square else height // patch_size
    lateral = has_lateral.long()
    ours = cls + n + (n + lateral_cls) * lateral
    published = torch.full_like(ours, cls + 2 * n + lateral_cls) if fake_lateral else ours
    if pairs == "batch":  # the whole batch as one sequence
        return ours.sum(), published.sum(), ours.sum() ** 2, published.sum() ** 2
    return ours.sum(), published.sum(), (ours**2).sum(), (published**2).sum()


def _tokens_cases() -> list[Case]:
    settings = [
        (224, 16, [True, False, True, True]),
        (224, 16, [True] * 3),
        (64, 8, [False, False]),
        ((256, 192), 16, [False, True, False]),
        (32, 32, [True]),
        ((96, 160), 8, [True, False, False, False, True]),
    ]
    cases = []
    for size, patch, lateral in settings:
        label = (
            f"image_size={size!r}, patch_size={patch}, has_lateral={lateral} "
            f"({sum(lateral)} of {len(lateral)} studies with a lateral)"
        )
        cases.append(Case(label, (size, patch, torch.tensor(lateral))))
    return cases


def check_move_tokens(fn: Callable) -> CheckResult:
    """Grade exercise 2.1: ``fn(image_size, patch_size, has_lateral)`` must return the tokens and attention
    pairs of a batch in medst and in the published code: (tokens medst, tokens published, pairs medst, pairs
    published)."""

    def variant(**options):
        return lambda *args: _tokens_reference(*args, **options)

    return run_check(
        Check(
            "2.1",
            "tokens of the image tower",
            "move_tokens",
            _tokens_cases(),
            _tokens_reference,
            forbidden=(MoVE,),
            hint="N = (height / patch) x (width / patch) per view; a study has [CLS] + N frontal tokens, + N lateral "
            "ones when it has a lateral (the lateral gets no [CLS] of its own); the published code gives every "
            "study 1 + 2N tokens; attention scores every pair of tokens of one study: (tokens of the study)^2, "
            "summed over the studies.",
            mistakes=[
                ("the [CLS] token is missing: a study has 1 + N (+ N) tokens", variant(cls=0)),
                (
                    "the lateral view gets a [CLS] token of its own; only the frontal one has [CLS]",
                    variant(lateral_cls=1),
                ),
                ("N is (size / patch) x (size / patch): patches form a 2-D grid", variant(square=False)),
                (
                    "the published code runs 1 + 2N tokens for every study: a zero image stands in for a missing "
                    "lateral",
                    variant(fake_lateral=False),
                ),
                (
                    "the attention pairs are counted as if the whole batch were one sequence; each study attends "
                    "within its own tokens: sum the squares per study",
                    variant(pairs="batch"),
                ),
            ],
            outputs=("tokens medst", "tokens published", "attention pairs medst", "attention pairs published"),
        ),
        tensor_answer(fn),
    )


# ----------------------------------------------------------------------------------------------------
# Exercise 2.2: the word merge with a max
# ----------------------------------------------------------------------------------------------------
# A toy WordPiece vocabulary: 0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], 4 [MASK], 5-17 word starts, 18-29 "##" pieces.
_PAD, _CLS, _SEP, _VOCAB = 0, 2, 3, 30
_STARTS, _CONTINUATIONS = range(5, 18), range(18, 30)


def _toy_continuation() -> Tensor:
    mask = torch.zeros(_VOCAB, dtype=torch.bool)
    mask[list(_CONTINUATIONS)] = True
    return mask


def _toy_report(
    pieces: int, length: int, gen: torch.Generator, *, sep: bool = True, lead_continuation: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids and attention mask of one report: [CLS] pieces [SEP] [PAD]... (length tokens)."""
    ids = [_CLS]
    for k in range(pieces):
        cont = (k > 0 and torch.rand(1, generator=gen).item() < 0.4) or (k == 0 and lead_continuation)
        pool = _CONTINUATIONS if cont else _STARTS
        ids.append(pool[int(torch.randint(len(pool), (1,), generator=gen))])
    if sep:
        ids.append(_SEP)
    mask = [1] * len(ids) + [0] * (length - len(ids))
    ids += [_PAD] * (length - len(ids))
    return ids[:length], mask[:length]


def _merge_case(
    label: str, rows: list[tuple[list[int], list[int]]], dim: int, seed: int, use_mask: bool = True, grad=(0,)
) -> Case:
    ids = torch.tensor([r[0] for r in rows])
    mask = torch.tensor([r[1] for r in rows])
    hidden = randn(*ids.shape, dim, seed=seed)
    shape = f"hidden [B={ids.shape[0]}, T={ids.shape[1]}, D={dim}] random (negative entries too)"
    ids_text = "; ".join(" ".join(map(str, row)) for row in ids.tolist()[:3])
    return Case(
        f"{label}: {shape}, input_ids rows: {ids_text}{' ...' if len(rows) > 3 else ''} "
        f"(0 [PAD], 2 [CLS], 3 [SEP], 18-29 '##' pieces), "
        f"attention_mask={'given' if use_mask else 'None'}",
        (hidden, ids, _toy_continuation(), _SEP, mask if use_mask else None),
        grad=grad,
    )


def _merge_cases() -> list[Case]:
    cases = []
    for seed, (batch, length) in enumerate([(2, 8), (4, 12), (3, 16)]):
        gen = generator(100 + seed)
        rows = [_toy_report(int(torch.randint(0, length - 1, (1,), generator=gen)), length, gen) for _ in range(batch)]
        cases.append(_merge_case(f"random reports (seed {seed})", rows, 4, seed))
    gen = generator(7)
    cases.append(
        _merge_case(
            "a '##' piece right after [CLS] starts a word of its own",
            [_toy_report(4, 8, gen, lead_continuation=True), _toy_report(3, 8, gen)],
            3,
            7,
        )
    )
    cases.append(
        _merge_case("a truncated report (no [SEP])", [_toy_report(9, 8, gen, sep=False), _toy_report(2, 8, gen)], 3, 8)
    )
    cases.append(
        _merge_case("an empty report ([CLS] [SEP] only)", [_toy_report(0, 6, gen), _toy_report(3, 6, gen)], 3, 9)
    )
    second = _toy_report(2, 10, gen)[0][:4] + [9, 20, 11, _SEP, _PAD, _PAD]
    cases.append(
        _merge_case(
            "words stop at the first [SEP] (a second segment follows, mask all ones)",
            [(second, [1] * 8 + [0, 0])],
            3,
            10,
        )
    )
    cases.append(
        _merge_case(
            "no attention_mask: [PAD] after [SEP] must not become words",
            [_toy_report(3, 9, gen), _toy_report(5, 9, gen)],
            3,
            11,
            use_mask=False,
        )
    )
    padded = _toy_report(4, 6, gen, sep=False)[0] + [_PAD] * 3  # no [SEP]: only attention_mask ends the words
    cases.append(
        _merge_case(
            "a report without [SEP], padded: attention_mask alone says where it ends",
            [(padded, [1] * 5 + [0] * 4), _toy_report(3, 9, gen)],
            3,
            13,
        )
    )
    # no word at all: the result is all zeros, whatever the input (no gradient to compare)
    cases.append(_merge_case("shortest input, T = 2", [([_CLS, _SEP], [1, 1])], 2, 12, grad=()))
    return cases


def _word_pieces(input_ids, continuation, sep_token_id, attention_mask=None) -> tuple[Tensor, Tensor]:
    """medst's grouping of pieces into words: ``member`` [B, T-1 words, T positions] (True where position t is
    a piece of word k, from :func:`merge_word_pieces` on one-hot vectors) and ``word_mask`` [B, T-1]."""
    B, T = input_ids.shape
    onehot = torch.eye(T).expand(B, T, T)
    member, word_mask = merge_word_pieces(onehot, input_ids, continuation, sep_token_id, attention_mask)
    return member > 0.5, word_mask


def _merge_max_reference(hidden, input_ids, continuation, sep_token_id, attention_mask=None):
    """The element-wise max over each word's pieces (medst's grouping); empty slots zero."""
    member, word_mask = _word_pieces(input_ids, continuation, sep_token_id, attention_mask)
    stacked = hidden[:, None].masked_fill(~member[..., None], float("-inf"))  # [B, W, T, D]
    words = stacked.amax(dim=2)
    return torch.where(word_mask[..., None], words, hidden.new_zeros(()))


def _merge_variant(
    hidden, input_ids, continuation, sep_token_id, attention_mask=None, *, reduce="max", empty=0.0, **grouping
):
    """A loop-based word merge with switchable mistakes (for hints only): ``reduce`` is max, sum, mean or
    max0 (the zeros the slots start from take part in the max); ``empty`` fills empty slots; ``grouping``:
    stop_at_sep, use_mask."""
    stop_at_sep, use_mask = grouping.get("stop_at_sep", True), grouping.get("use_mask", True)
    B, T, D = hidden.shape
    words = hidden.new_full((B, T - 1, D), empty)
    for b in range(B):
        groups: list[list[int]] = []
        for t in range(1, T):
            if attention_mask is not None and use_mask and not attention_mask[b, t]:
                continue
            if stop_at_sep and int(input_ids[b, t]) == sep_token_id:
                break
            if bool(continuation[input_ids[b, t]]) and groups:
                groups[-1].append(t)
            else:
                groups.append([t])
        for w, group in enumerate(groups):
            vectors = hidden[b, group]
            if reduce == "sum":
                words[b, w] = vectors.sum(0)
            elif reduce == "mean":
                words[b, w] = vectors.mean(0)
            elif reduce == "max0":
                words[b, w] = vectors.amax(0).clamp_min(0)
            else:
                words[b, w] = vectors.amax(0)
    return words


def check_merge_words_max(fn: Callable) -> CheckResult:
    """Grade exercise 2.2: ``fn(hidden, input_ids, continuation, sep_token_id, attention_mask)`` must return
    ``words [B, T-1, D]``, each word the element-wise max of its pieces (medst's grouping), empty slots zero."""

    def variant(**options):
        return lambda *args: _merge_variant(*args, **options)

    return run_check(
        Check(
            "2.2",
            "merge word pieces with a max",
            "merge_words_max",
            _merge_cases(),
            _merge_max_reference,
            forbidden=(merge_word_pieces,),
            hint="group the pieces as the chapter does (read from position 1 up to the first [SEP], skip positions "
            "where attention_mask is 0, a '##' piece continues the word before it); each word's vector is the "
            "element-wise max of its pieces' vectors; empty word slots are zero.",
            mistakes=[
                (
                    "the pieces of a word are summed (the chapter's merge); take their element-wise max",
                    variant(reduce="sum"),
                ),
                ("the pieces of a word are averaged; take their element-wise max", variant(reduce="mean")),
                (
                    "the zeros the word slots start from take part in the max, so a word's negative entries become "
                    "0 (scatter_reduce with include_self=True, or a max with a zero-filled tensor); use "
                    "include_self=False, or a max over the word's pieces only",
                    variant(reduce="max0"),
                ),
                (
                    "empty word slots are -inf (the max over no piece); they must be zero",
                    variant(empty=float("-inf")),
                ),
                ("the words do not stop at the first [SEP]", variant(stop_at_sep=False)),
                ("attention_mask is ignored", variant(use_mask=False)),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# Exercise 2.3: BatchNorm over the real tokens
# ----------------------------------------------------------------------------------------------------
def _bn_reference(bn: nn.BatchNorm1d, x: Tensor, mask: Tensor) -> Tensor:
    """medst's local-head normalisation: :func:`batch_norm_rows` over the real tokens in training mode, the
    running statistics in evaluation mode; padding slots zero."""
    B, T, C = x.shape
    valid = mask.bool().reshape(B * T)
    rows = x.reshape(B * T, C)
    y = batch_norm_rows(bn, rows, valid) if bn.training else bn(rows)
    return torch.where(valid[:, None], y, y.new_zeros(())).view(B, T, C)


def _bn_variant(
    bn,
    x,
    mask,
    *,
    stats="real",
    running_var="unbiased",
    momentum="torch",
    eval_stats="running",
    zero_padding=True,
    normalise_var="biased",
    detach=False,
):
    """BatchNorm over tokens with switchable mistakes (for hints only)."""
    valid = mask.bool()[..., None].to(x.dtype)
    weights = valid if stats == "real" else torch.ones_like(valid)
    if bn.training or eval_stats == "batch":
        n = weights.sum()
        mean = (x * weights).sum((0, 1)) / n
        var = ((x - mean) ** 2 * weights).sum((0, 1)) / n
        unbiased = var * n / (n - 1)
        if bn.training:
            with torch.no_grad():
                bn.num_batches_tracked += 1
                m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                keep, new = (m, 1 - m) if momentum == "swapped" else (1 - m, m)
                bn.running_mean.mul_(keep).add_(new * mean)
                bn.running_var.mul_(keep).add_(new * (unbiased if running_var == "unbiased" else var))
        norm_var = unbiased if normalise_var == "unbiased" else var
        if detach:
            mean, norm_var = mean.detach(), norm_var.detach()
    else:
        mean, norm_var = bn.running_mean, bn.running_var
    y = (x - mean) / torch.sqrt(norm_var + bn.eps)
    if bn.affine:
        y = y * bn.weight + bn.bias
    return y * valid if zero_padding else y


def _with_statistics(fn: Any) -> Any:
    """``fn(bn, x, mask)`` -> (y, the gradient of (y * w).sum() w.r.t. x for a fixed random w, bn.running_mean,
    bn.running_var after the call): what exercise 2.3 compares. (The gradient of y.sum() itself says nothing: a
    normalised channel sums to a constant.) The refusal of library code sees ``fn`` itself."""
    if not callable(fn):
        return fn

    @functools.wraps(fn)
    def graded(bn, x, mask):
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            y = fn(bn, x, mask)
            if not isinstance(y, Tensor):
                return y
            weight = randn(*y.shape, seed=77) if y.shape == x.shape else torch.ones_like(y)
            grad = torch.zeros_like(x)
            if y.requires_grad:
                (g,) = torch.autograd.grad((y * weight).sum(), x, allow_unused=True)
                grad = torch.zeros_like(x) if g is None else g
        return y.detach(), grad, bn.running_mean.detach().clone(), bn.running_var.detach().clone()

    return graded


def _bn(channels: int, seed: int, *, affine=True, momentum: float | None = 0.1, tracked=0, train=True):
    """A BatchNorm1d with random parameters and running statistics, in the given mode."""
    bn = nn.BatchNorm1d(channels, affine=affine, momentum=momentum)
    with torch.no_grad():
        bn.running_mean.copy_(randn(channels, seed=seed, scale=0.5))
        bn.running_var.copy_(0.5 + randn(channels, seed=seed + 1).abs())
        bn.num_batches_tracked.fill_(tracked)
        if affine:
            bn.weight.copy_(1 + randn(channels, seed=seed + 2, scale=0.3))
            bn.bias.copy_(randn(channels, seed=seed + 3, scale=0.3))
    return bn.train(train)


def _word_mask(lengths: list[int], T: int) -> Tensor:
    return torch.arange(T)[None] < torch.tensor(lengths)[:, None]


def _bn_cases() -> list[Case]:
    cases = []
    settings = [  # label, bn options, x shape, mask, x scale and shift
        ("training mode, word mask (padding at the end of each row)", {}, (3, 5, 6), _word_mask([5, 2, 3], 5)),
        (
            "training mode, momentum=None (cumulative average; num_batches_tracked was 3), affine=False",
            {"momentum": None, "tracked": 3, "affine": False},
            (2, 6, 4),
            _word_mask([4, 6], 6),
        ),
        ("training mode, every token real (a plain BatchNorm)", {"momentum": 0.3}, (2, 4, 5), _word_mask([4, 4], 4)),
        (
            "training mode, patch mask with the lateral slots of two studies off (padding in the middle)",
            {},
            (3, 8, 4),
            torch.tensor([[True] * 8, [True] * 4 + [False] * 4, [True] * 4 + [False] * 4]),
        ),
        ("evaluation mode: the running statistics", {"train": False}, (3, 5, 6), _word_mask([5, 1, 3], 5)),
        (
            "evaluation mode, affine=False, padding in the middle",
            {"train": False, "affine": False},
            (2, 6, 3),
            torch.tensor([[True, False, True, True, False, True], [False, True, True, True, True, False]]),
        ),
    ]
    for seed, (text, options, shape, mask) in enumerate(settings):
        bn = _bn(shape[-1], 500 + 10 * seed, **options)
        x = 1.5 + randn(*shape, seed=600 + seed, scale=2.0)
        x = torch.where(mask[..., None], x, 5.0 + 3.0 * x)  # padding far from the real tokens' statistics
        mode = "train" if bn.training else "eval"
        label = (
            f"{text}: x [B={shape[0]}, T={shape[1]}, C={shape[2]}], {int(mask.sum())} real tokens, "
            f"bn.{mode}(), momentum={bn.momentum}"
        )
        cases.append(CopyCase(label, (bn, x, mask)))
    return cases


def check_masked_batch_norm(fn: Callable) -> CheckResult:
    """Grade exercise 2.3: ``fn(bn, x, mask)`` must return BatchNorm's output [B, T, C] with statistics over
    the real tokens (training mode) or the running ones (evaluation mode), zero at padding, and update bn's
    running statistics as BatchNorm does; its gradient is compared too."""

    def variant(**options):
        return _with_statistics(lambda bn, x, mask: _bn_variant(bn, x, mask, **options))

    return run_check(
        Check(
            "2.3",
            "BatchNorm over the real tokens",
            "masked_batch_norm",
            _bn_cases(),
            _with_statistics(_bn_reference),
            forbidden=(batch_norm_rows, LocalHead, GlobalBatchNorm1d, nn.modules.batchnorm._BatchNorm, F.batch_norm),
            hint="training mode: mean and biased variance per channel over the real tokens; y = (x - mean) / "
            "sqrt(var + eps) (* weight + bias if affine); running = (1 - m) * running + m * batch statistic, with the "
            "unbiased variance n / (n - 1) * var and m = momentum (or 1 / num_batches_tracked after adding 1 when "
            "momentum is None); evaluation mode: the running statistics; padding slots of y are zero.",
            mistakes=[
                (
                    "the padding tokens take part in the statistics (the published local head); average over the "
                    "real tokens only",
                    variant(stats="all"),
                ),
                (
                    "x is normalised with the unbiased variance (torch.var's default); BatchNorm normalises with the "
                    "biased one (unbiased=False) and keeps the unbiased one in running_var",
                    variant(normalise_var="unbiased"),
                ),
                (
                    "running_var is updated with the biased variance; BatchNorm keeps the unbiased one, n / (n - 1) "
                    "times it",
                    variant(running_var="biased"),
                ),
                (
                    "the momentum is the other way round: torch's running statistic is (1 - momentum) * running "
                    "+ momentum * batch",
                    variant(momentum="swapped"),
                ),
                (
                    "evaluation mode uses the batch's statistics; it must use the running ones",
                    variant(eval_stats="batch"),
                ),
                ("the padding slots of y are not zero", variant(zero_padding=False)),
                (
                    "the batch statistics are cut from the graph (detached): the gradient also flows through the "
                    "mean and the variance",
                    variant(detach=True),
                ),
            ],
            outputs=(
                "y",
                "d(y * w).sum() / dx (w fixed, random)",
                "bn.running_mean",
                "bn.running_var",
            ),
        ),
        _with_statistics(fn),
    )


# ----------------------------------------------------------------------------------------------------
# The exercise texts; the solutions are solutions/ch02_move_tokens.py, ch02_merge_words_max.py,
# ch02_masked_batch_norm.py
# ----------------------------------------------------------------------------------------------------
MOVE_TOKENS = r"""
How much work is a batch for the image tower? Predict first, then write
`move_tokens(image_size, patch_size, has_lateral)`: `image_size` is an `int` (a square image) or a pair
`(height, width)`, both multiples of `patch_size`; `has_lateral` is a `[B]` bool tensor (which studies of the
batch have a lateral view). Return four numbers:

1. the tokens medst's image tower runs for the batch (Method §3.1, §3.4: one sequence per study, [CLS] and the
   frontal patches, and the lateral patches only for a study that has a lateral);
2. the tokens the published code runs (a zero image stands in for every missing lateral);
3. and 4. the query-key pairs that *one* self-attention layer scores in each case (each study attends within
   its own sequence).

At 224 pixels with patch 16 and half the studies with a lateral, how much does medst save on tokens, and how
much on attention? The check runs several sizes, non-square images and batches with and without laterals.
"""

MERGE_WORDS_MAX = r"""
The chapter merges word pieces into words by **summing** their vectors. Some models take the element-wise
**max** instead. Write `merge_words_max(hidden, input_ids, continuation, sep_token_id, attention_mask=None)`:
the pieces are grouped into words exactly as in the chapter (position 0 holds `[CLS]`; words are read from
position 1 up to the first `[SEP]`, skipping positions where `attention_mask` is 0; a `##` piece, where
`continuation[id]` is True, continues the word before it, except right after `[CLS]`), and word $k$ is

$$w_k[c] = \max_{t \,:\, \text{word}(t) = k} h_t[c].$$

Return `words` `[B, T-1, D]` with word $k$ in slot $k$ and **empty slots zero**; no Python loop over tokens
(`Tensor.scatter_reduce` does a segment max: read what its `include_self` means; the vectors have negative
entries). The check compares values and gradients with medst's grouping on toy reports, empty and truncated
ones included; you may not call `medst.models.text.merge_word_pieces`.
"""

MASKED_BATCH_NORM = r"""
The local head's BatchNorm takes its statistics over the **real** tokens only (`LocalHead` above); padded
words and missing lateral patches must not move them. Write `masked_batch_norm(bn, x, mask)` for tokens
`x` `[B, T, C]`, `mask` `[B, T]` (True: a real token) and `bn` a `torch.nn.BatchNorm1d(C)`, using its mode,
parameters and running statistics but not calling it (nor `F.batch_norm`):

- **training mode** (`bn.training`): per channel, the mean $\mu$ and the *biased* variance $\sigma^2$ over the
  $n$ real tokens; $y = (x - \mu) / \sqrt{\sigma^2 + \varepsilon}$, then `* bn.weight + bn.bias` when
  `bn.affine`; and, as BatchNorm does, update `bn.running_mean` and `bn.running_var` in place:
  $r \leftarrow (1 - m)\, r + m\, s$ with $s = \mu$, and $s = \frac{n}{n-1}\sigma^2$ (the unbiased variance) for
  the variance, $m$ = `bn.momentum`, or, when the momentum is `None`, $m = 1/k$ after adding 1 to
  `bn.num_batches_tracked` ($k$);
- **evaluation mode**: the running statistics, which stay as they are;
- padding slots of $y$ are **zero**.

Return `y` `[B, T, C]`. The check runs both modes, a word mask and a patch mask (padding in the middle), and
compares `y`, its gradient with respect to `x` and the running statistics after the call.
"""

CHAPTER = "02_encoders"
EXERCISES = [
    Exercise(
        key="move-tokens",
        chapter=CHAPTER,
        number="2.1",
        title="tokens of the image tower",
        function="move_tokens",
        prompt=MOVE_TOKENS,
        solution="ch02_move_tokens",
        checker=check_move_tokens,
        level="easy",
    ),
    Exercise(
        key="merge-words-max",
        chapter=CHAPTER,
        number="2.2",
        title="merge word pieces with a max",
        function="merge_words_max",
        prompt=MERGE_WORDS_MAX,
        solution="ch02_merge_words_max",
        checker=check_merge_words_max,
        level="medium",
    ),
    Exercise(
        key="masked-batch-norm",
        chapter=CHAPTER,
        number="2.3",
        title="BatchNorm over the real tokens",
        function="masked_batch_norm",
        prompt=MASKED_BATCH_NORM,
        solution="ch02_masked_batch_norm",
        checker=check_masked_batch_norm,
        level="hard",
    ),
]

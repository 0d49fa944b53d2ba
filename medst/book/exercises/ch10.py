"""Exercises 10.1 and 10.2 (chapter 10, MPMA): whole-word masking, and the pixel loss for any mask.

* 10.1 (hard) ``whole_word_mask``: the report side of MPMA's paired masking with whole words instead of word
  pieces: exactly ``max(1, round(r·n))`` of a report's ``n`` ordinary words, every piece of each, never a special
  or padding token, drawn uniformly at random with the given generator. A mask is random, so the check compares
  what the masks of many seeds *are* (counts per report, pieces apart from their word, special tokens hit, the
  same mask for the same seed, how often each word is drawn) with what the reference's masks are.
* 10.2 (medium) ``masked_pixel_loss``: L_MIM from images ``[B, C, H, W]`` (three channels, rectangular grids) and a
  mask with any number of removed patches per image (none at all, too), the predictions at kept patches never read
  (NaN there changes nothing); compared in values and gradients with
  :func:`medst.neighbours.mpma.masked_patch_loss`.

Both refuse the library's implementation (``random_token_mask``, ``masked_count``, ``masked_patch_loss``,
``normalise_patches``, ``patchify``, ...).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor

from medst.book.exercises.framework import (
    Case,
    Check,
    CheckResult,
    Exercise,
    argument_ignored,
    generator,
    randn,
    run_check,
)
from medst.neighbours.mpma import (
    masked_count,
    masked_patch_loss,
    masked_token_loss,
    normalise_patches,
    patchify,
    random_patch_mask,
    random_token_mask,
    unpatchify,
    visible_indices,
)

# ----------------------------------------------------------------------------------------------------
# Exercise 10.1: whole-word masking
# ----------------------------------------------------------------------------------------------------
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103  # BERT's special ids
SPECIAL_IDS = torch.tensor([PAD, UNK, CLS, SEP, MASK])
DRAWS = 300  # seeds per case: how often each word is drawn is counted over these
SPREAD = 0.15  # a word's share of the draws may differ from the report's mean share by this much
SAME_SEED = 7  # the seed drawn twice (with the global generator moved in between)
WORD_OUTPUTS = (
    "masked words per report, fewest over the draws",
    "masked words per report, most over the draws",
    "a piece masked apart from its word's first piece (per report, in any draw)",
    "a special or padding position masked (per report, in any draw)",
    "the same seed gives the same mask",
    "every word of a report drawn about equally often",
)


def _report(pieces: list[int], length: int, *, seed: int, unk_after: int | None = None, pad_ids: bool = False):
    """One report: [CLS], words of ``pieces[w]`` pieces (an [UNK] after word ``unk_after``), [SEP], padding to
    ``length``. Returns (ids, attention, word_start) [length] each. ``pad_ids``: the padding holds ordinary ids
    (only attention_mask says it is padding), some of them "##" pieces."""
    g = generator(seed)
    ids, start = [CLS], [True]
    for w, count in enumerate(pieces):
        ids += (1000 + torch.randint(0, 500, (count,), generator=g)).tolist()
        start += [True] + [False] * (count - 1)
        if unk_after == w:
            ids, start = ids + [UNK], start + [True]
    ids, start = ids + [SEP], start + [True]
    real = len(ids)
    if real > length:
        raise ValueError(f"a report of {real} tokens does not fit in {length}")
    padding = length - real
    if pad_ids:
        ids += (1000 + torch.randint(0, 500, (padding,), generator=g)).tolist()
        start += [bool(i % 2) for i in range(padding)]
    else:
        ids, start = ids + [PAD] * padding, start + [True] * padding
    attention = [1] * real + [0] * padding
    return torch.tensor(ids), torch.tensor(attention), torch.tensor(start)


def _word_cases() -> list[Case]:
    specs = [  # ratio, pieces per word of each report, padded length, [UNK] after word, padding holds ids, what
        (
            0.25,
            [[1, 1, 1, 7], [1, 1]],
            12,
            None,
            False,
            "one word of 7 pieces: it must be drawn as often as the others",
        ),
        (0.15, [[1, 2, 1, 1, 3, 1, 1, 2, 1, 1], [2, 1, 1]], 16, None, False, "10 words (1.5 rounds up to 2), 3 words"),
        (0.5, [[1, 3, 1, 2, 1], [2], []], 10, None, False, "5 words (2.5 rounds up to 3), one word, an empty report"),
        (0.3, [[1, 1, 2, 1, 1, 1, 2, 1, 1], [1, 2, 1, 1]], 16, 3, True, "an [UNK] inside report 0; report 1's padding"),
        (1.0, [[2, 1, 3, 1], [1, 1]], 10, None, False, "every word"),
        (0.25, [[1, 1, 1, 1, 1, 4], [3, 1]], 12, None, False, "6 words (1.5 rounds up to 2)"),
    ]
    cases = []
    for seed, (ratio, reports, length, unk, pad_ids, what) in enumerate(specs):
        rows = [
            _report(p, length, seed=10 * seed + i, unk_after=unk if i == 0 else None, pad_ids=pad_ids and i == 1)
            for i, p in enumerate(reports)
        ]
        ids, attention, start = (torch.stack(parts) for parts in zip(*rows))
        words = [len(p) for p in reports]
        label = (
            f"{len(reports)} reports padded to T={length} with {words} ordinary words (pieces per word "
            f"{reports}); {what}{' holds ordinary ids, attention_mask 0' if pad_ids else ''}; ratio={ratio}; "
            f"special_ids={SPECIAL_IDS.tolist()}; generators seeded 0 ... {DRAWS - 1}"
        )
        cases.append(Case(label, (ids, attention, start, SPECIAL_IDS.clone()), {"ratio": ratio}))
    return cases


def _words(input_ids: Tensor, attention_mask: Tensor, word_start: Tensor, special_ids: Tensor):
    """(ordinary [B, T], first pieces [B, T], each token's word number [B, T]: 1, 2, ... within its report)."""
    ordinary = attention_mask.bool() & ~torch.isin(input_ids, special_ids)
    starts = ordinary & word_start.bool()
    return ordinary, starts, starts.cumsum(dim=1)


def _word_variant(
    input_ids,
    attention_mask,
    word_start,
    special_ids,
    ratio,
    generator=None,
    *,
    unit="words",
    rounding="half up",
    at_least_one=True,
    cap=True,
    attention=True,
    pieces="all",
    draw="random",
):
    """Whole-word masking, with switchable mistakes (all defaults: the right answer, the check's reference)."""
    ordinary, starts, word = _words(
        input_ids, attention_mask if attention else torch.ones_like(attention_mask), word_start, special_ids
    )
    candidates = starts if unit == "words" else ordinary  # what is drawn: first pieces, or any piece
    n = (starts if unit != "tokens" else ordinary).sum(dim=1).double()
    if rounding == "half up":
        k = torch.floor(n * ratio + 0.5)
    elif rounding == "half even":
        k = torch.round(n * ratio)
    else:
        k = torch.floor(n * ratio)
    k = k.clamp_min(1) if at_least_one else k
    k = torch.minimum(k, candidates.sum(dim=1).double()) if cap else k
    if draw == "random":
        noise = torch.rand(input_ids.shape, generator=generator)
    elif draw == "global":
        noise = torch.rand(input_ids.shape)
    else:  # the first words every time
        noise = torch.arange(input_ids.shape[1], dtype=torch.float32).expand(input_ids.shape[0], -1).clone()
    noise = torch.where(candidates, noise, torch.full_like(noise, 2.0))
    drawn = noise.argsort(dim=1).argsort(dim=1) < k.long()[:, None]
    if unit == "tokens":  # the chapter's random_token_mask: pieces, not words
        return drawn
    if pieces == "first":  # the drawn words' first pieces only
        return drawn & starts
    chosen = torch.zeros(word.shape[0], word.shape[1] + 1, dtype=torch.bool)
    chosen = chosen.scatter(1, torch.where(drawn, word, torch.zeros_like(word)), drawn)
    return (ordinary & chosen.gather(1, word)) | (drawn & ~candidates)  # uncapped: a drawn non-word is masked


def _summary_of_masks(masks: list, same: tuple, input_ids, attention_mask, word_start, special_ids, function: str):
    """What the check compares (:data:`WORD_OUTPUTS`) from the masks of the draws and the two same-seed masks."""
    shape = tuple(input_ids.shape)
    for mask in [*masks, *same]:
        if not (isinstance(mask, Tensor) and mask.dtype == torch.bool and tuple(mask.shape) == shape):
            what = (
                f"{mask.dtype} tensor of shape {list(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            )
            raise TypeError(
                f"`{function}` must return a bool tensor of shape {list(shape)} (True = masked), not a {what}"
            )
    ordinary, starts, word = _words(input_ids, attention_mask, word_start, special_ids)
    stack = torch.stack(masks).cpu()  # [D, B, T]
    counts = (stack & starts).sum(dim=2)  # [D, B] masked words
    first = torch.zeros(*stack.shape[:2], shape[1] + 1, dtype=torch.bool)  # [D, B, T + 1] per word: first piece
    first = first.scatter(2, torch.where(stack & starts, word, 0), stack & starts)
    apart = ((stack != first.gather(2, word.expand_as(stack))) & ordinary).any(dim=2).any(dim=0)  # [B]
    wrong_places = (stack & ~ordinary).any(dim=2).any(dim=0)  # [B]
    share = (stack & starts).double().mean(dim=0)  # [B, T] how often each first piece is masked
    mean = counts.double().mean(dim=0) / starts.sum(dim=1).clamp_min(1)  # [B] a word's mean share
    even = ((share - mean[:, None]).abs() <= SPREAD) | ~starts
    return (
        counts.min(dim=0).values,
        counts.max(dim=0).values,
        apart,
        wrong_places,
        torch.tensor(torch.equal(same[0], same[1])),
        even.all(dim=1),
    )


def _drawn_many(fn: Callable) -> Callable:
    """``fn`` as the check sees it: called with generators seeded 0 ... DRAWS - 1, and twice with the seed SAME_SEED
    (the global generator moved in between), summarised by :func:`_summary_of_masks`. The global generator is
    left as it was; ``functools.wraps`` keeps ``fn`` visible to the framework (the library is still refused)."""

    @functools.wraps(fn)
    def drawn(input_ids, attention_mask, word_start, special_ids, ratio):
        def draw(seed: int) -> Tensor:
            return fn(input_ids, attention_mask, word_start, special_ids, ratio=ratio, generator=generator(seed))

        with torch.random.fork_rng(devices=[]):
            masks = [draw(seed) for seed in range(DRAWS)]
            once = draw(SAME_SEED)
            torch.rand(7)  # a function that draws from the global generator gets another mask now
            again = draw(SAME_SEED)
        name = getattr(fn, "__name__", "whole_word_mask")
        return _summary_of_masks(masks, (once, again), input_ids, attention_mask, word_start, special_ids, name)

    return drawn


def check_whole_word_mask(fn: Callable) -> CheckResult:
    """Grade exercise 10.1: ``fn(input_ids, attention_mask, word_start, special_ids, ratio, generator=None)`` for
    [B, T] ids, attention mask and word starts must return a [B, T] bool mask with every piece of exactly
    ``max(1, round(ratio·n))`` of each report's ``n`` ordinary words (none if ``n`` is 0), never a special or padding
    position, the words drawn uniformly at random with ``generator``."""

    def variant(**options):
        return lambda ids, att, ws, sp, ratio, generator=None: _word_variant(
            ids, att, ws, sp, ratio, generator, **options
        )

    check = Check(
        "10.1",
        "whole-word masking",
        "whole_word_mask",
        _word_cases(),
        _word_variant,
        outputs=WORD_OUTPUTS,
        forbidden=(random_token_mask, random_patch_mask, masked_count, visible_indices),
        hint="the ordinary tokens are attention_mask & not in special_ids; a word is an ordinary token with "
        "word_start True and the continuation pieces after it; n = the number of such first pieces per report, "
        "k = min(max(1, floor(ratio·n + 0.5)), n); draw k of the first pieces uniformly at random with `generator` "
        "(e.g. torch.rand(..., generator=generator), the k smallest among them), then mask every piece of each drawn "
        "word and nothing else.",
        mistakes=[
            (
                "this masks word pieces, as random_token_mask does: whole-word masking draws words (their first "
                "pieces) and masks every piece of each drawn word",
                variant(unit="tokens"),
            ),
            (
                "only the first piece of each drawn word is masked; its '##' continuation pieces must be masked too",
                variant(pieces="first"),
            ),
            (
                "the draw is over pieces (then their words are masked): a word of many pieces is drawn more often, "
                "and two pieces of one word give one masked word; draw among the words' first pieces only",
                variant(unit="pieces"),
            ),
            (
                "round(ratio·n) rounds halves to even (torch.round, Python's round): 2.5 -> 2; the count rounds "
                "halves up, as masked_count does: floor(ratio·n + 0.5)",
                variant(rounding="half even"),
            ),
            (
                "int(ratio·n) rounds down; the count is round(ratio·n) with halves up: floor(ratio·n + 0.5)",
                variant(rounding="floor"),
            ),
            ("a report must lose at least one word: max(1, round(ratio·n))", variant(at_least_one=False)),
            (
                "a report without ordinary words must lose nothing: with max(1, ...) alone, the draw picks a special "
                "or padding token; cap the count at n",
                variant(cap=False),
            ),
            (
                "positions with attention_mask 0 are padding whatever id they hold; only attention_mask & not special "
                "is ordinary",
                variant(attention=False),
            ),
            (
                "the mask ignores `generator` (it draws from torch's global generator): the same seed must give the "
                "same mask; pass generator=generator to torch.rand / torch.randperm",
                variant(draw="global"),
            ),
            (
                "the same words are masked in every draw (the first ones); draw them at random with `generator`",
                variant(draw="first"),
            ),
            argument_ignored(_word_variant, "ratio", 0.15),
        ],
    )
    if not callable(fn):
        return run_check(check, fn)
    check.reference = _drawn_many(check.reference)
    check.mistakes = [(hint, _drawn_many(wrong)) for hint, wrong in check.mistakes]
    return run_check(check, _drawn_many(fn))


# ----------------------------------------------------------------------------------------------------
# Exercise 10.2: the pixel loss for any mask
# ----------------------------------------------------------------------------------------------------
def _pixel_cases() -> list[Case]:
    specs = [  # seed, batch, channels, H, W, patch, removed per image, norm_pix, NaN at kept patches, what
        (0, 2, 1, 8, 8, 4, [3, 3], True, False, "every image loses 3 of its 4 patches, as in the chapter"),
        (1, 3, 3, 8, 12, 4, [5, 1, 3], True, False, "unequal counts; a removed patch of image 0 is flat (variance 0)"),
        (2, 2, 3, 12, 8, 4, [4, 0], True, False, "image 1 loses no patch at all"),
        (3, 3, 3, 8, 12, 4, [2, 6, 1], False, False, "raw pixels (norm_pix=False)"),
        (4, 2, 1, 8, 8, 2, [12, 5], True, True, "the predictions at kept patches are NaN (they are never read)"),
        (5, 2, 1, 8, 8, 4, [0, 0], True, False, "nothing removed at all: the loss is 0"),
    ]
    cases = []
    for seed, batch, channels, height, width, p, removed, norm, nan, what in specs:
        gh, gw = height // p, width // p
        images = randn(batch, channels, height, width, seed=seed, scale=0.5)
        mask = torch.zeros(batch, gh * gw, dtype=torch.bool)
        for i, count in enumerate(removed):
            mask[i, torch.randperm(gh * gw, generator=generator(100 + 10 * seed + i))[:count]] = True
        if seed == 1:  # a flat patch among the removed ones: its normalised target is 0, not 0 / 0
            n = int(mask[0].nonzero()[0])
            r, c = divmod(n, gw)
            images[0, :, r * p : (r + 1) * p, c * p : (c + 1) * p] = 0.3
        pred = randn(batch, gh * gw, p * p * channels, seed=50 + seed)
        if nan:
            pred = torch.where(mask[..., None], pred, torch.full_like(pred, float("nan")))
        label = (
            f"images [B={batch}, C={channels}, H={height}, W={width}], patch={p} (a {gh}x{gw} grid, N={gh * gw}), "
            f"pred [B={batch}, N={gh * gw}, P={p * p * channels}], mask with {removed} removed patches per image; "
            f"{what}; norm_pix={norm}"
        )
        cases.append(Case(label, (pred, images, mask, p), {"norm_pix": norm}, grad=() if nan else (0,)))
    return cases


def _pixel_reference(pred, images, mask, patch, norm_pix=True):
    return masked_patch_loss(pred, images, mask, patch=patch, norm_pix=norm_pix)


def _pixel_variant(
    pred,
    images,
    mask,
    patch,
    norm_pix=True,
    *,
    order="(p q c)",
    grid="(h w)",
    unbiased=False,
    scope="patch",
    normalise_pred=False,
    pixels="mean",
    reduce="removed",
):
    """L_MIM with switchable mistakes (all defaults: the right answer)."""
    target = rearrange(images, f"b c (h p) (w q) -> b {grid} {order}", p=patch, q=patch)
    if norm_pix:
        dims = (-2, -1) if scope == "image" else (-1,)
        mean, var = target.mean(dim=dims, keepdim=True), target.var(dim=dims, keepdim=True, unbiased=unbiased)
        target = (target - mean) / (var + 1e-6).sqrt()
        if normalise_pred:
            pm, pv = pred.mean(dim=-1, keepdim=True), pred.var(dim=-1, keepdim=True, unbiased=False)
            pred = (pred - pm) / (pv + 1e-6).sqrt()
    error = (pred - target).pow(2)
    per_patch = error.mean(dim=-1) if pixels == "mean" else error.sum(dim=-1)
    kept = torch.where(mask, per_patch, torch.zeros_like(per_patch))
    if reduce == "removed":
        return kept.sum() / mask.sum().clamp_min(1)
    if reduce == "images":  # the mean of each image's mean
        return (kept.sum(dim=1) / mask.sum(dim=1)).mean()
    if reduce == "all slots":  # divided by every patch of the batch
        return kept.mean()
    return per_patch.mean()  # every patch, kept ones too


def check_masked_pixel_loss(fn: Callable) -> CheckResult:
    """Grade exercise 10.2: ``fn(pred, images, mask, patch, norm_pix=True)`` for pred [B, N, p²C], images
    [B, C, H, W] and mask [B, N] (any number of removed patches per image) must return L_MIM, the mean over all
    removed patches of the batch of the mean squared pixel error (0 if none), as
    :func:`medst.neighbours.mpma.masked_patch_loss` (values and gradients)."""

    def variant(**options):
        return lambda pred, images, mask, patch, norm_pix=True: _pixel_variant(
            pred, images, mask, patch, norm_pix, **options
        )

    return run_check(
        Check(
            "10.2",
            "the pixel loss for any mask",
            "masked_pixel_loss",
            _pixel_cases(),
            _pixel_reference,
            forbidden=(masked_patch_loss, normalise_patches, patchify, unpatchify, masked_token_loss),
            hint="cut the images into patches in the ViT's order (grid row by grid row) with each patch's pixels "
            "flattened (row, column, channel), as the chapter's mim_by_hand does; with norm_pix, (x - mean) / "
            "sqrt(var + 1e-6) per patch, biased variance (a flat patch has variance 0); the error of a patch is the "
            "mean over its pixels; select the removed patches with torch.where (a kept patch's prediction may be NaN, "
            "and 0 * NaN is NaN); divide the sum by the number of removed patches of the whole batch, at least 1.",
            mistakes=[
                (
                    "each patch's pixels are flattened channel first, (c p q); the predictions are ordered (p q c): "
                    "row within the patch, column, channel, as patchify and the chapter's mim_by_hand",
                    variant(order="(c p q)"),
                ),
                (
                    "the patches are taken column by column; the ViT (and the mask) number them row by row: "
                    "n = row · grid width + column",
                    variant(grid="(w h)"),
                ),
                (
                    "the variance is the unbiased one (torch.var's default); normalise_patches divides by the number "
                    "of pixels: var(unbiased=False)",
                    variant(unbiased=True),
                ),
                (
                    "each patch is normalised with the whole image's mean and variance; norm_pix is per patch",
                    variant(scope="image"),
                ),
                ("the predictions are normalised too; only the targets are", variant(normalise_pred=True)),
                (
                    "the squared error is summed over a patch's pixels; L_MIM takes their mean (1/P)",
                    variant(pixels="sum"),
                ),
                (
                    "this is the mean of each image's mean: an image that loses one patch weighs as much as one that "
                    "loses five; L_MIM is the mean over all removed patches of the batch",
                    variant(reduce="images"),
                ),
                (
                    "the sum is divided by the number of all patches (B·N), kept ones included; divide by the number "
                    "of removed patches",
                    variant(reduce="all slots"),
                ),
                ("the kept patches count too; only the removed ones enter L_MIM", variant(reduce="every patch")),
                argument_ignored(_pixel_reference, "norm_pix", True),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# The exercise texts; the solutions are solutions/ch10_whole_word_mask.py, ch10_masked_pixel_loss.py
# ----------------------------------------------------------------------------------------------------
WHOLE_WORD_MASK = r"""
`random_token_mask` masks word *pieces*. The WordPiece tokenizer cuts a word it does not know whole into
pieces (the later ones written with a leading `##`), and with one piece hidden the pieces around it nearly give
it away: the MLM head can fill it in from the spelling alone, without reading the image or the rest of the
report. *Whole-word masking* draws words instead, and hides every piece of each drawn word.

Write `whole_word_mask(input_ids, attention_mask, word_start, special_ids, ratio, generator=None)` for
`input_ids`, `attention_mask` and `word_start` of shape `[B, T]`: `word_start` is True where a token begins a
word and False for a `##` continuation piece, which follows its word's first piece directly; `special_ids` holds
the ids that are never masked ([CLS], [SEP], [PAD], [UNK], ...). Return a `[B, T]` bool mask (True = replaced by
[MASK]) such that, in a report with $n$ ordinary words,

* exactly $\max(1, \mathrm{round}(r\,n))$ words are masked, halves rounded up as `masked_count` rounds them, and
  none when $n = 0$;
* every piece of a masked word is masked, and nothing else: never a special token, never a position that
  `attention_mask` drops (whatever id it holds);
* the words are drawn uniformly at random (each word of a report equally likely, however many pieces it has)
  with `generator`, so that the same seed gives the same mask.

**Predict first**: on the chapter's running example with $r_T = 0.15$, does whole-word masking hide more
pieces per report than `random_token_mask`, fewer, or about as many on average? Then count both over a few
hundred seeds (the word starts: `[not t.startswith("##") for t in tokenizer.convert_ids_to_tokens(row)]`), and
print a report masked your way as the chapter printed its masked reports.

The check runs your function on small reports (padding, an empty report, a one-word report, an [UNK] inside a
report, padding positions holding ordinary ids, ratios from 0.15 to 1) with generators seeded 0 to 299, and
compares what the masks are: the masked words per report, pieces masked apart from their word, special or padding
positions masked, the same mask for the same seed, and how often each word is drawn.
"""

MASKED_PIXEL_LOSS = r"""
In the chapter every image loses the same number of patches, $\mathrm{round}(r_I N)$. Other masking rules do
not keep that count (removing whole blocks of the image, or mixing ratios in a batch), and then it matters how
$\mathcal{L}_\text{MIM}$ averages: the chapter's formula is the mean over **all removed patches of the batch**,
$\frac{1}{\sum_i |M_i|}\sum_i \sum_{n \in M_i} \frac{1}{P}\lVert \hat{x}_{i,n} - \bar{x}_{i,n} \rVert^2$.

Write `masked_pixel_loss(pred, images, mask, patch, norm_pix=True)` without Python loops: `images`
`[B, C, H, W]` ($C$ may be 3, $H \ne W$), `patch` $p$, `pred` `[B, N, p^2 C]` with the patches in the ViT's
order and each patch's pixels flattened as the chapter's `mim_by_hand` flattens them, `mask` `[B, N]` bool
(True = removed; any number per image, possibly none). With `norm_pix` the targets are the normalised patches
$\bar{x}$ of the chapter ($\epsilon = 10^{-6}$, the variance over the patch's pixels with $1/P$), without it the
raw pixels. A kept patch enters nowhere: its prediction may be anything, even NaN, without changing the loss
or its gradient. A batch without any removed patch scores 0 (a tensor in the graph of `pred`, as always).

**Predict first**: a decoder that predicts 0 at every patch; what does it score with `norm_pix=True`, whatever
the images? The chapter says such a decoder scores "at most 1": why *at most*, and for which patches is it
less? Check with your function on `example.frontal`. Then find a mask on the running example (a block of
patches in one image, a few in another) where your loss and the mean of each image's mean differ, and say
which image weighs more in each.

The check compares values and gradients with `medst.neighbours.mpma.masked_patch_loss`, on one and three
channels, square and rectangular grids, unequal counts of removed patches, an image and a batch with none, a
flat patch, and NaN predictions at the kept patches.
"""

CHAPTER = "10_mpma"
EXERCISES = [
    Exercise(
        key="whole-word-mask",
        chapter=CHAPTER,
        number="10.1",
        title="whole-word masking",
        function="whole_word_mask",
        prompt=WHOLE_WORD_MASK,
        solution="ch10_whole_word_mask",
        checker=check_whole_word_mask,
        level="hard",
    ),
    Exercise(
        key="masked-pixel-loss",
        chapter=CHAPTER,
        number="10.2",
        title="the pixel loss for any mask",
        function="masked_pixel_loss",
        prompt=MASKED_PIXEL_LOSS,
        solution="ch10_masked_pixel_loss",
        checker=check_masked_pixel_loss,
        level="medium",
    ),
]

"""Exercises 11.1 and 11.2 (chapter 11, UniMedI): volume tokens by hand, and the precision of slice selection.

* 11.1 (medium) ``volume_tokens_by_hand``: UniMedI's 3-D patch embedding as a reshape and one matrix product (no
  convolution), in :class:`medst.neighbours.unimedi.VolumeEmbed`'s token order (slab, then row, then column) with
  its factorised position tables added; compared with ``VolumeEmbed`` in values and gradients (volumes, kernel,
  bias, both tables) on several patch shapes, two channels, non-square in-plane grids, one slab, and volumes
  smaller than the tables. Besides the library's classes, any convolution (``nn.Conv3d``, ``F.conv3d``,
  ``torch.convolution``, ...) is refused: :class:`_NoConvolution` watches every torch call of the reader's function.
* 11.2 (easy) ``selection_precision``: precision@k of text-guided slice selection and its chance level, over the
  volumes with a finding, equal scores picked in the order of the slab index; compared with a reference written
  here (:func:`_precision_variant`), on scores with ties (a collapsed scorer), volumes without a finding, k = 1 and
  k = S. The library's ``select_slabs``, ``slab_scores``, ``selection_metrics`` and ``slice_selection`` are refused.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
import torch.nn as nn
from einops import rearrange
from torch import Tensor
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from medst.book.exercises.framework import (
    Case,
    Check,
    CheckResult,
    Exercise,
    ExerciseError,
    _forbidden_code,
    _wrap,
    argument_ignored,
    generator,
    log_outcome,
    randn,
    run_check,
)
from medst.eval.volumes import selection_metrics, slice_selection
from medst.neighbours.unimedi import UniMedI, VolumeEmbed, select_slabs, slab_scores

# ----------------------------------------------------------------------------------------------------
# Exercise 11.1: volume tokens by hand
# ----------------------------------------------------------------------------------------------------
_TOKEN_LIBRARY = (VolumeEmbed, UniMedI.volume_tokens, UniMedI.encode_volume)


class _Convolution(BaseException):
    """Raised inside the reader's function when it computes a convolution: ``args`` = (the torch function's name,
    the library's functions on the stack at that moment). A BaseException, so that neither an ``except Exception``
    of the reader's nor the framework turns it into a wrong answer; :func:`check_volume_tokens` reports it."""


class _NoConvolution(TorchFunctionMode):
    """While active, any torch convolution (``torch.conv3d`` = ``F.conv3d``, ``nn.Conv3d``'s forward,
    ``torch.convolution``, ``torch.ops.aten.convolution``, the 1-D / 2-D and transposed ones) raises
    :class:`_Convolution`; every other torch call runs as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if "conv" in name and "convert" not in name:
            codes = _forbidden_code(_TOKEN_LIBRARY)
            frame, library = sys._getframe(), []
            while frame is not None:
                if frame.f_code in codes and codes[frame.f_code] not in library:
                    library.append(codes[frame.f_code])
                frame = frame.f_back
            raise _Convolution(name, library[::-1])
        return func(*args, **(kwargs or {}))


def _without_convolution(fn: Callable) -> Callable:
    """``fn`` run under :class:`_NoConvolution`; ``functools.wraps`` keeps ``fn`` visible to the framework (an alias
    of the library is still refused as such)."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        with _NoConvolution():
            return fn(*args, **kwargs)

    return guarded


def _token_cases() -> list[Case]:
    specs = [  # seed, patch, volumes [V, C, D, H, W], tables (slices, rows, columns), D_v, what
        (
            0,
            (2, 4, 4),
            (2, 1, 4, 8, 12),
            (8, 12, 16),
            6,
            "2 slabs of a 2×3 grid; the tables hold 4 slabs and 3×4 positions: the first slabs and the top-left "
            "positions are used",
        ),
        (1, (2, 4, 4), (1, 1, 6, 8, 8), (6, 8, 8), 8, "3 slabs of a 2×2 grid, the tables' size exactly"),
        (
            2,
            (1, 2, 3),
            (2, 1, 3, 6, 6),
            (4, 8, 9),
            5,
            "a patch of 1×2×3 voxels: 3 slabs of a 3×2 grid; tables of 4 slabs and 4×3 positions",
        ),
        (
            3,
            (4, 2, 2),
            (2, 2, 8, 4, 6),
            (12, 6, 6),
            6,
            "two channels, slabs of 4 slices: 2 slabs of a 2×3 grid; tables of 3 slabs and 3×3 positions",
        ),
        (
            4,
            (2, 3, 3),
            (3, 1, 2, 9, 6),
            (4, 9, 9),
            4,
            "a single slab of a 3×2 grid; tables of 2 slabs and 3×3 positions",
        ),
    ]
    cases = []
    for seed, patch, shape, tables, dim, what in specs:
        v, c, d, h, w = shape
        p_d, p_h, p_w = patch
        s_max, g_h, g_w = (n // p for n, p in zip(tables, patch))
        volumes = randn(*shape, seed=10 * seed, scale=0.5)
        weight = randn(dim, c, *patch, seed=10 * seed + 1, scale=0.2)
        bias = randn(dim, seed=10 * seed + 2, scale=0.1)
        pos_depth = randn(s_max, dim, seed=10 * seed + 3, scale=0.1)
        pos_plane = randn(g_h, g_w, dim, seed=10 * seed + 4, scale=0.1)
        label = (
            f"volumes [V={v}, C={c}, D={d}, H={h}, W={w}], patch={patch}, weight [{dim}, {c}, {p_d}, {p_h}, {p_w}], "
            f"bias [{dim}], pos_depth [{s_max}, {dim}], pos_plane [{g_h}, {g_w}, {dim}]; {what}"
        )
        cases.append(Case(label, (volumes, weight, bias, pos_depth, pos_plane, patch), grad=(0, 1, 2, 3, 4)))
    return cases


def _tokens_reference(volumes, weight, bias, pos_depth, pos_plane, patch):
    """:class:`VolumeEmbed` with the given kernel and tables (its parameters replaced, so gradients reach them)."""
    dim, channels = weight.shape[:2]
    rows, columns = pos_plane.shape[0] * patch[1], pos_plane.shape[1] * patch[2]
    with torch.device("meta"):  # no memory, no draw from the global generator
        embed = VolumeEmbed(dim, patch, pos_depth.shape[0] * patch[0], (rows, columns), in_chans=channels)
    parameters = {"proj.weight": weight, "proj.bias": bias, "pos_depth": pos_depth, "pos_plane": pos_plane}
    tokens, _ = functional_call(embed, parameters, (volumes,))
    return tokens


def _tokens_variant(
    volumes,
    weight,
    bias,
    pos_depth,
    pos_plane,
    patch,
    *,
    order="(s h w)",
    kernel="(c a b e)",
    with_bias=True,
    depth="slab",
    plane="top-left",
):
    """The 3-D patch embedding with switchable mistakes (all defaults: the right answer)."""
    p_d, p_h, p_w = patch
    s, h, w = volumes.shape[2] // p_d, volumes.shape[3] // p_h, volumes.shape[4] // p_w
    dim = weight.shape[0]
    cubes = rearrange(volumes, "v c (s a) (h b) (w e) -> v s h w (c a b e)", a=p_d, b=p_h, e=p_w)
    x = cubes @ rearrange(weight, f"d c a b e -> {kernel} d")  # [V, S, h, w, D_v]
    x = x + bias if with_bias else x
    if depth == "slab":
        x = x + pos_depth[:s, None, None]
    elif depth == "tiled":  # token t (slab-major) gets pos_depth[t mod S]
        x = x + pos_depth[torch.arange(s * h * w) % s].reshape(s, h, w, dim)
    if plane == "top-left":
        x = x + pos_plane[:h, :w]
    elif plane == "flat":  # the whole table flattened, its first P entries
        x = x + pos_plane.reshape(-1, dim)[: h * w].reshape(h, w, dim)
    return rearrange(x, f"v s h w d -> v {order} d")


def _tokens_check() -> Check:
    """Exercise 11.1's check: its inputs, reference (VolumeEmbed) and mistake models."""

    def variant(**options):
        return lambda volumes, weight, bias, pos_depth, pos_plane, patch: _tokens_variant(
            volumes, weight, bias, pos_depth, pos_plane, patch, **options
        )

    return Check(
        "11.1",
        "volume tokens by hand",
        "volume_tokens_by_hand",
        _token_cases(),
        _tokens_reference,
        forbidden=(*_TOKEN_LIBRARY, nn.Conv3d),
        hint="cut the volumes into patches with einops.rearrange, 'v c (s a) (h b) (w e) -> v (s h w) (c a b e)' "
        "with a, b, e = p_d, p_h, p_w; flatten the weight [D_v, C, p_d, p_h, p_w] in the same order (c a b e); one "
        "matrix product, plus the bias; then add pos_depth[:S] per slab and pos_plane[:g_h, :g_w] per in-plane "
        "position (broadcast over [S, g_h, g_w]) and flatten the positions in the tokens' order (s h w).",
        mistakes=[
            (
                "the slabs run fastest (row, column, then slab); VolumeEmbed's tokens are slab-major: the P in-plane "
                "tokens of slab 0, then those of slab 1, ...: token s·P + i·g_w + j",
                variant(order="(h w s)"),
            ),
            (
                "within a slab the tokens run column by column; they run row by row (the ViT's order): "
                "token s·P + i·g_w + j",
                variant(order="(s w h)"),
            ),
            (
                "the kernel is transposed in-plane (p_w before p_h) against the patches: flatten the weight "
                "[D_v, C, p_d, p_h, p_w] and every patch in the same order, (c p_d p_h p_w)",
                variant(kernel="(c a e b)"),
            ),
            (
                "the kernel's slices are flattened last (c p_h p_w p_d) against the patches (or the other way "
                "round): flatten both in the same order, (c p_d p_h p_w)",
                variant(kernel="(c b e a)"),
            ),
            ("the bias is left out: a Conv3d adds it to every token", variant(with_bias=False)),
            (
                "no position tables are added: token (s, i, j) gets pos_depth[s] + pos_plane[i, j]",
                variant(depth="none", plane="none"),
            ),
            ("the depth table (pos_depth, one entry per slab) is not added", variant(depth="none")),
            ("the in-plane table (pos_plane) is not added", variant(plane="none")),
            (
                "pos_plane is flattened over the whole table and its first P entries taken: for a grid narrower "
                "than the table those are not the top-left block; cut pos_plane[:g_h, :g_w] first, then flatten",
                variant(plane="flat"),
            ),
            (
                "pos_depth is tiled over the tokens (token t gets pos_depth[t mod S]); in slab-major order token t "
                "lies in slab t // P: broadcast pos_depth[:S, None, None] over the in-plane grid",
                variant(depth="tiled"),
            ),
        ],
    )


def check_volume_tokens(fn: Callable) -> CheckResult:
    """Grade exercise 11.1: ``fn(volumes, weight, bias, pos_depth, pos_plane, patch)`` for volumes [V, C, D, H, W],
    a Conv3d kernel [D_v, C, p_d, p_h, p_w] and bias [D_v], tables [S_max, D_v] and [G_h, G_w, D_v] must return
    the tokens [V, S·P, D_v] of :class:`medst.neighbours.unimedi.VolumeEmbed` (values and gradients), computed
    without a convolution."""
    check = _tokens_check()
    if not callable(fn):
        return run_check(check, fn)
    try:
        return run_check(check, _without_convolution(fn))
    except _Convolution as used:
        name, library = used.args
        if library:
            message = f"{check.name}: `{check.function}` calls the library's {', '.join(f'`{n}`' for n in library)}.\n"
            hint = (
                f"hint: write `{check.function}` with torch operations instead; the check compares your version with "
                "VolumeEmbed itself, so calling it proves nothing."
            )
        else:
            message = f"{check.name}: `{check.function}` computes a convolution (`{name}`).\n"
            hint = (
                "hint: the point of the exercise is that a convolution whose kernel equals its stride is a reshape "
                "and a matrix product: no nn.Conv3d, F.conv3d or other convolution; cut the volumes into patches "
                "(einops.rearrange), flatten the kernel in the same order and multiply (torch.einsum or @). The check "
                "compares your tokens with VolumeEmbed's, which does use a Conv3d."
            )
        message += _wrap(hint)
        log_outcome(check, "failed", message)
        raise ExerciseError(message) from None


# ----------------------------------------------------------------------------------------------------
# Exercise 11.2: did the report pick the right slices?
# ----------------------------------------------------------------------------------------------------
def _picks(scores: Tensor, k: int, *, largest: bool = True, ties: str = "lower") -> Tensor:
    """LongTensor [V, k]: per row the k highest (``largest``) or lowest scores; equal scores by ``ties``: "lower"
    index first, "higher" index first, or "topk" (torch.topk's order, unspecified)."""
    if ties == "topk":
        return scores.topk(k, dim=1, largest=largest).indices
    sign, index_sign = (-1.0 if largest else 1.0), (1 if ties == "lower" else -1)
    rows = [
        sorted(range(len(row)), key=lambda s, row=row: (sign * row[s], index_sign * s))[:k] for row in scores.tolist()
    ]
    return torch.tensor(rows, dtype=torch.long).reshape(scores.shape[0], k)


def _precision_variant(
    scores,
    truth,
    k,
    *,
    largest=True,
    ties="lower",
    precision_over="found",
    chance_over="found",
    hit_rate=False,
):
    """(precision, chance) with switchable mistakes (all defaults: the right answer, the check's reference).

    ``precision_over`` / ``chance_over``: "found" (the volumes with a true slab) or "all" (every volume)."""
    truth = truth.bool()
    found = truth.any(dim=1)
    every = torch.ones_like(found)
    hits = truth.gather(1, _picks(scores, k, largest=largest, ties=ties))  # [V, k]
    per_volume = hits.any(dim=1).double() if hit_rate else hits.double().mean(dim=1)  # [V]
    share = truth.double().mean(dim=1)  # [V] true slabs per slab
    precision = per_volume[found if precision_over == "found" else every].mean()
    chance = share[found if chance_over == "found" else every].mean()
    return precision, chance


def _precision_cases() -> list[Case]:
    cases = []
    # a designed case where every mistake gives its own answer
    scores = torch.tensor(
        [
            [0.1, 0.7, 0.3, 0.9, -0.2, 0.5, 0.0, 0.2],
            [0.4] * 8,  # a collapsed scorer: every slab the same score
            [0.3, -0.1, 0.2, 0.6, 0.8, 0.1, -0.4, 0.0],
            [0.8, 0.6, 0.6, 0.6, 0.1, 0.1, 0.0, -0.3],
            [0.2, -0.5, 0.9, 0.4, 0.3, 0.7, -0.1, 0.6],
        ]
    )
    truth = torch.zeros(5, 8, dtype=torch.bool)
    for v, slabs in enumerate([[2, 3], [0, 2, 5], [], [0, 2, 4], [5]]):
        truth[v, slabs] = True
    cases.append(
        Case(
            "scores [V=5, S=8], k=2: volume 1 scores every slab 0.4, volume 3 has three slabs at 0.6 for the second "
            "pick, volume 2 has no true slab",
            (scores, truth),
            {"k": 2},
        )
    )
    g = generator(110)
    scores = torch.rand(6, 16, generator=g) * 2 - 1
    truth = torch.rand(6, 16, generator=g) < 0.3
    truth[[1, 4]] = False
    truth[0, 0] = True
    cases.append(
        Case(
            "scores [V=6, S=16] uniform in [-1, 1) (no ties), about 30 % true slabs, volumes 1 and 4 without one",
            (scores, truth),
            {"k": 4},
        )
    )
    scores = torch.randint(0, 3, (8, 6), generator=g).float()
    truth = torch.rand(8, 6, generator=g) < 0.4
    truth[2] = False
    truth[5, 5] = True
    cases.append(
        Case("scores [V=8, S=6] in {0, 1, 2} (many ties), volume 2 without a true slab", (scores, truth), {"k": 1})
    )
    scores = torch.rand(3, 4, generator=g)
    truth = torch.tensor([[True, False, False, True], [False, False, False, False], [False, True, True, True]])
    cases.append(
        Case("scores [V=3, S=4], k=S=4 (every slab picked), volume 1 without a true slab", (scores, truth), {"k": 4})
    )
    scores = -torch.rand(4, 32, generator=g) * 0.5  # negative cosines
    truth = torch.zeros(4, 32, dtype=torch.bool)
    for v, (start, stop) in enumerate([(3, 9), (20, 23), (0, 2), (10, 30)]):  # a finding occupies a band of slabs
        truth[v, start:stop] = True
    scores[1] = -0.2  # a collapsed scorer again
    cases.append(
        Case(
            "scores [V=4, S=32] negative (cosines), the true slabs a band per volume; volume 1 scores every slab -0.2",
            (scores, truth),
            {"k": 2},
        )
    )
    cases.append(
        Case(
            "a single volume, scores [1, 5], its true slab the second best",
            (torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2]]), torch.tensor([[False, False, False, True, False]])),
            {"k": 3},
        ),
    )
    return cases


def _precision_check() -> Check:
    """Exercise 11.2's check: its inputs, reference (:func:`_precision_variant`) and mistake models."""

    def variant(**options):
        return lambda scores, truth, k: _precision_variant(scores, truth, k, **options)

    return Check(
        "11.2",
        "did the report pick the right slices?",
        "selection_precision",
        _precision_cases(),
        _precision_variant,
        forbidden=(select_slabs, slab_scores, selection_metrics, slice_selection),
        outputs=("precision", "chance"),
        hint="keep the volumes with at least one true slab (truth.any(dim=1)); in each, pick the k highest "
        "scores, equal scores in the order of their slab index (torch.sort(scores, dim=1, descending=True, "
        "stable=True).indices[:, :k]); precision = true picks / (V'·k); chance = the mean over the same volumes "
        "of their share of true slabs.",
        mistakes=[
            (
                "the k lowest scores are picked; selection takes the k highest (descending=True)",
                variant(largest=False),
            ),
            (
                "equal scores are taken in torch.topk's order, which is not the slab order (on CPU, 8 equal "
                "scores give slabs 6 and 5 for k=2); the rule here is the lower slab index first: "
                "torch.sort(scores, dim=1, descending=True, stable=True)",
                variant(ties="topk"),
            ),
            (
                "equal scores go to the higher slab index first (an ascending sort flipped does that); the rule is "
                "the lower index first: a stable descending sort",
                variant(ties="higher"),
            ),
            (
                "the volumes without a true slab are kept: they have nothing to find and pull both numbers "
                "down; leave them out of precision and chance alike",
                variant(precision_over="all", chance_over="all"),
            ),
            (
                "the chance level is pooled over every volume, those without a true slab too; it is the mean "
                "share of true slabs over the same volumes as the precision (those with a finding)",
                variant(chance_over="all"),
            ),
            (
                "the precision counts the picks of the volumes without a true slab too; leave them out, as from "
                "the chance level",
                variant(precision_over="all"),
            ),
            (
                "this is the share of volumes with at least one true pick (a hit rate); precision@k counts every "
                "pick: true picks / (V'·k)",
                variant(hit_rate=True),
            ),
            argument_ignored(_precision_variant, "k", 1),
        ],
    )


def check_selection_precision(fn: Callable) -> CheckResult:
    """Grade exercise 11.2: ``fn(scores, truth, k)`` for scores [V, S] and truth [V, S] bool must return
    (precision, chance) over the volumes with a true slab: the share of true slabs among the k highest-scored of
    each (equal scores: the lower index first) and the mean share of true slabs, as a reference written here."""
    return run_check(_precision_check(), fn)


# ----------------------------------------------------------------------------------------------------
# The exercise texts; the solutions are solutions/ch11_volume_tokens.py, ch11_selection_precision.py
# ----------------------------------------------------------------------------------------------------
VOLUME_TOKENS = r"""
`VolumeEmbed` tokenises a volume with a `Conv3d` whose kernel equals its stride, `(p_d, p_h, p_w)`: the
patches do not overlap, so each token is one matrix product of its patch's voxels with the kernel. Its tokens
come slab-major (all $P$ in-plane tokens of slab 0, then those of slab 1, ...; within a slab row by row, as the
ViT numbers its 2-D patches), and token $(s, i, j)$ gets the sum of two learned tables, `pos_depth[s]` and
`pos_plane[i, j]`; a volume smaller than the tables uses their first slabs and their top-left block.

Write `volume_tokens_by_hand(volumes, weight, bias, pos_depth, pos_plane, patch)` **without any convolution**
(no `nn.Conv3d`, no `F.conv3d`; `einops.rearrange` and `torch.einsum` or `@` are what you need), for `volumes`
`[V, C, D, H, W]`, the kernel `weight` `[D_v, C, p_d, p_h, p_w]` and `bias` `[D_v]` of a `Conv3d`, `pos_depth`
`[S_max, D_v]`, `pos_plane` `[G_h, G_w, D_v]` and `patch` $= (p_d, p_h, p_w)$, which divides $D$, $H$ and $W$. Return
the tokens `[V, S·P, D_v]`, $S = D / p_d$, $P = g_h g_w = (H / p_h)(W / p_w)$, exactly as `VolumeEmbed` returns
them: token $s P + i\,g_w + j$ is slab $s$, row $i$, column $j$.

**Predict first**: turn a volume upside down (`volumes.flip(2)`: the slices in reverse order). Are its tokens
the old ones with the slabs in reverse order? Name everything that breaks it, then check with your function:
with both tables set to zero, and once more with a kernel that is symmetric in depth (`weight + weight.flip(2)`).
Then take the chapter's model (its `volume_embed`): how many of its parameters are the kernel, how many the two
tables, and how many would one table with an entry per 3-D position need?

The check compares values and gradients (volumes, kernel, bias, both tables) with
`medst.neighbours.unimedi.VolumeEmbed` on patches of 2×4×4, 1×2×3, 4×2×2 (two channels) and 2×3×3 voxels,
non-square in-plane grids, a single slab, and volumes smaller than the tables; a convolution is refused.
"""

SELECTION_PRECISION = r"""
The chapter scores slice selection with precision@k: per volume, the $k$ slabs with the highest scores
(the report embedding dotted with each slab embedding), and the share of those picks that show a finding. Its
chance level is what $k$ random picks score in expectation: per volume, the share of its slabs that are true.
A volume without any finding has nothing to find, so it is left out of both numbers.

Write `selection_precision(scores, truth, k)` for `scores` `[V, S]`, `truth` `[V, S]` bool (the slab shows a
finding: `medst.eval.volumes.slab_truth`) and $1 \le k \le S$. Return two scalar tensors `(precision, chance)`
over the $V'$ volumes with at least one true slab (there is always one): the share of their $V' k$ picks that are
true, and the mean over them of their share of true slabs.

**Equal scores.** As in `select_slabs`, equal scores are picked in the order of their slab index, the lower
(more inferior) first: a stable sort. (`torch.topk` does not promise any order among equal scores: on a CPU,
8 equal scores give slabs 6 and 5 for $k = 2$.)

**Predict first**: a scorer that has collapsed (the same score for every slab) picks the $k$ most inferior slabs
under this rule. Does it score the chance level, more, or less? It depends on where the findings lie along the
body: sum the truth of the chapter's volumes over the volumes and predict, then compute it with your function and
constant scores, and compare the chapter's model with it and with the chance level.

The check compares both numbers with a reference on designed and random scores, many equal scores, volumes
without a finding, $k = 1$ and $k = S$.
"""

CHAPTER = "11_unimedi"
EXERCISES = [
    Exercise(
        key="volume-tokens",
        chapter=CHAPTER,
        number="11.1",
        title="volume tokens by hand",
        function="volume_tokens_by_hand",
        prompt=VOLUME_TOKENS,
        solution="ch11_volume_tokens",
        checker=check_volume_tokens,
        level="medium",
    ),
    Exercise(
        key="selection-precision",
        chapter=CHAPTER,
        number="11.2",
        title="did the report pick the right slices?",
        function="selection_precision",
        prompt=SELECTION_PRECISION,
        solution="ch11_selection_precision",
        checker=check_selection_precision,
        level="easy",
    ),
]

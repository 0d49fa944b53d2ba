"""Exercises 4.1-4.3 (chapter 4, Method §3): what MoVE adds to a ViT, experts chosen per token, a mixed batch.

* 4.1 (easy) ``move_extra_parameters``: how many parameters the lateral experts add, compared with the
  ``lateral_experts`` of :class:`medst.models.vision.MoVE` around tiny timm ViTs of several shapes.
* 4.2 (medium) ``routed_block``: one MoVE block whose expert is chosen per token by a mask (views interleaved
  or shuffled), compared with :meth:`MoVE.joint_block` on the tokens sorted frontal-first (attention does not
  care about the order of its tokens), in eval mode and in train mode with drop path.
* 4.3 (hard) ``mixed_batch_block``: one block on a padded batch where only some studies have a lateral view,
  in one call, compared with the library's two groups (:meth:`MoVE.joint_block` for the studies with a lateral,
  the plain timm block for the others) in eval mode, and in train mode with drop path.

Drop path draws from torch's global random generator. :func:`_in_case_mode` (a helper of this module) calls the
reader's function, the reference and every mistake model with the case's block and expert in the case's mode
(train or eval, set again before each call) and the generator seeded by the case, so that in train mode all of
them draw the same per-sample masks when they drop the same branches; the reader's generator state is restored.
The reader's function gets copies of the block and the expert, so that nothing it changes in them reaches the
reference.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, generator, randn, run_check
from medst.models.vision import LateralExpert, MoVE, make_lateral_expert

DROP_PATH = 0.5  # drop-path probability of every block of the tiny MoVEs (active in train mode only)


# ----------------------------------------------------------------------------------------------------
# A tiny MoVE, and calls in the case's mode with the case's random draws
# ----------------------------------------------------------------------------------------------------
def _tiny_move(seed: int, dim: int = 16, drop_path: float = DROP_PATH) -> MoVE:
    """A 2-block MoVE around a tiny timm ViT with layer scale and drop path (no dropout); every weight
    jittered so that norms, layer scales and the two experts all differ."""
    with torch.random.fork_rng(devices=[]):  # the reader's generator is left as it was
        torch.manual_seed(seed)
        move = MoVE(
            VisionTransformer(
                img_size=16, patch_size=8, embed_dim=dim, depth=2, num_heads=2, init_values=0.5, num_classes=0
            )
        )
    with torch.no_grad():
        for p in move.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator(seed + p.numel())))
    for blk in move.vit.blocks:
        blk.drop_path1, blk.drop_path2 = DropPath(drop_path), DropPath(drop_path)
    return move.eval()


@dataclass
class _Setting:
    """How one case runs: its MoVE and block index, train or eval mode, the seed of its random draws."""

    move: MoVE
    index: int
    training: bool
    seed: int


def _in_case_mode(fn: Callable, settings: dict[int, _Setting], copies: bool = False) -> Callable:
    """``fn(block, lateral_expert, x, ...)`` called in the case's mode, with the global generator seeded by
    the case (and restored afterwards). The case is found from its block; the mode is set again before each
    call, so that a function that switches the block to eval mode cannot change what the next call sees.
    With ``copies``, ``fn`` gets copies of the block and the expert: whatever it changes in them (a module
    replaced, a weight edited) stays out of the reference's call."""

    @functools.wraps(fn)
    def call(block, lateral_expert, x, *args, **kwargs):
        setting = settings[id(block)]
        if copies:
            block, lateral_expert = copy.deepcopy(block), copy.deepcopy(lateral_expert)
        block.train(setting.training)
        lateral_expert.train(setting.training)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(setting.seed)
            return fn(block, lateral_expert, x, *args, **kwargs)

    return call


def _grade(check: Check, fn: Any, settings: dict[int, _Setting]) -> CheckResult:
    """run_check with the reader's function (on copies of the modules), the reference and the mistake models
    called in the case's mode."""
    if not callable(fn):
        return run_check(check, fn)  # says "pass the function itself"
    check.reference = _in_case_mode(check.reference, settings)
    check.mistakes = [(hint, _in_case_mode(wrong, settings)) for hint, wrong in check.mistakes]
    return run_check(check, _in_case_mode(fn, settings, copies=True))


def _mode(training: bool) -> str:
    return f"train mode (drop path {DROP_PATH}, seeded)" if training else "eval mode"


# ----------------------------------------------------------------------------------------------------
# Exercise 4.1: the parameters MoVE adds
# ----------------------------------------------------------------------------------------------------
_PARAMETER_SHAPES = [  # depth, dim, mlp_ratio, layer_scale: small enough that a count off by one is seen
    (2, 16, 4.0, True),
    (3, 8, 4.0, False),
    (1, 12, 2.0, True),
    (2, 10, 2.5, False),
    (4, 6, 3.0, True),
]


def _as_count(fn: Callable) -> Callable:
    """The reader's count (an int, a float or a 0-d tensor) as a float64 tensor, for the comparison."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        value = fn(*args, **kwargs)
        if isinstance(value, Tensor) or value is None or isinstance(value, (str, bytes)):
            return value
        try:
            return torch.tensor(float(value), dtype=torch.float64)
        except (TypeError, ValueError):
            return value

    return call


def _lateral_parameters(depth, dim, mlp_ratio=4.0, layer_scale=True) -> Tensor:
    """Reference: the parameters of MoVE's lateral experts around a timm ViT of this shape."""
    with torch.random.fork_rng(devices=[]):  # initialising the weights draws from the generator
        vit = VisionTransformer(
            img_size=8,
            patch_size=8,
            embed_dim=dim,
            depth=depth,
            num_heads=2,
            mlp_ratio=mlp_ratio,
            init_values=0.1 if layer_scale else None,
            num_classes=0,
        )
        move = MoVE(vit)
    return torch.tensor(float(sum(p.numel() for p in move.lateral_experts.parameters())), dtype=torch.float64)


def _count_variant(
    depth, dim, mlp_ratio=4.0, layer_scale=True, *, norm=True, biases=True, scale=True, attention=False, blocks=True
):
    hidden = int(dim * mlp_ratio)
    per_block = (2 * dim if norm else 0) + 2 * dim * hidden + ((hidden + dim) if biases else 0)
    per_block += dim if (scale and layer_scale) else 0
    if attention:  # norm1 + qkv + proj
        per_block += 2 * dim + 3 * dim * dim + 3 * dim + dim * dim + dim
    return torch.tensor(float(per_block * (depth if blocks else 1)), dtype=torch.float64)


def check_move_extra_parameters(fn: Callable) -> CheckResult:
    """Grade exercise 4.1: ``fn(depth, dim, mlp_ratio=4.0, layer_scale=True)`` must return the number of
    parameters that MoVE's lateral experts add to a timm ViT of that shape (an int)."""

    def variant(**options):
        return lambda depth, dim, mlp_ratio=4.0, layer_scale=True: _count_variant(
            depth, dim, mlp_ratio, layer_scale, **options
        )

    cases = [
        Case(
            f"depth={depth}, dim={dim}, mlp_ratio={ratio}, layer_scale={scale} (a ViT with "
            f"{'' if scale else 'no '}layer scale, MLP hidden size int(dim * mlp_ratio) = {int(dim * ratio)})",
            (depth, dim),
            {"mlp_ratio": ratio, "layer_scale": scale},
        )
        for depth, dim, ratio, scale in _PARAMETER_SHAPES
    ]
    check = Check(
        "4.1",
        "what MoVE adds to a ViT",
        "move_extra_parameters",
        cases,
        _lateral_parameters,
        forbidden=(MoVE, LateralExpert, make_lateral_expert),
        hint="one lateral expert per block, shaped like the block's own feed-forward part: a LayerNorm (weight and "
        "bias), the MLP's two Linear layers (weights and biases, hidden size int(dim * mlp_ratio)) and, with "
        "layer scale, its gamma (dim values). The attention is shared: it adds nothing.",
        mistakes=[
            (
                "the attention is counted too; both views share the block's attention, a lateral expert is only "
                "a norm, an MLP and a layer scale",
                variant(attention=True),
            ),
            ("the LayerNorm of the expert (weight and bias, 2 * dim) is missing", variant(norm=False)),
            ("the biases of the MLP's two Linear layers are missing", variant(biases=False)),
            ("the layer scale (dim values per expert when layer_scale=True) is missing", variant(scale=False)),
            ("only one expert is counted; MoVE adds one lateral expert to every block", variant(blocks=False)),
        ],
    )
    if not callable(fn):
        return run_check(check, fn)
    return run_check(check, _as_count(fn))


# ----------------------------------------------------------------------------------------------------
# Exercise 4.2: the expert chosen per token by a mask
# ----------------------------------------------------------------------------------------------------
def _interleaved(batch: int, patches: int) -> Tensor:
    """[CLS, f1, l1, f2, l2, ...]: True at the lateral tokens."""
    lateral = torch.zeros(batch, 1 + 2 * patches, dtype=torch.bool)
    lateral[:, 2::2] = True
    return lateral


def _shuffled(batch: int, tokens: int, counts: list[int], seed: int) -> Tensor:
    """Each row: counts[b] lateral tokens at random positions (never position 0, the [CLS] token)."""
    lateral = torch.zeros(batch, tokens, dtype=torch.bool)
    for b, count in enumerate(counts):
        positions = 1 + torch.randperm(tokens - 1, generator=generator(seed + b))[:count]
        lateral[b, positions] = True
    return lateral


def _routed_cases(settings: dict[int, _Setting]) -> list[Case]:
    specs = [  # label of the layout, lateral mask, block, training, seed
        ("MoVE's own order [CLS, 4 frontal, 4 lateral]", torch.arange(9).expand(2, 9) >= 5, 0, False, 1),
        ("views interleaved [CLS, f1, l1, f2, l2, ...]", _interleaved(3, 4), 1, False, 2),
        ("lateral tokens at random positions, 4 in row 0 and 2 in row 1", _shuffled(2, 9, [4, 2], 30), 0, False, 3),
        ("no lateral token (a single view: the plain ViT block)", torch.zeros(2, 7, dtype=torch.bool), 1, False, 4),
        ("views interleaved [CLS, f1, l1, f2, l2, ...]", _interleaved(4, 3), 0, True, 5),
        ("lateral tokens at random positions, 3 per row", _shuffled(4, 9, [3, 3, 3, 3], 50), 1, True, 7),
        ("no lateral token (a single view: the plain ViT block)", torch.zeros(4, 5, dtype=torch.bool), 0, True, 8),
    ]
    cases = []
    for k, (layout, lateral, index, training, seed) in enumerate(specs):
        move = _tiny_move(seed)
        block, expert = move.vit.blocks[index], move.lateral_experts[index]
        settings[id(block)] = _Setting(move, index, training, seed)
        batch, tokens = lateral.shape
        x = randn(batch, tokens, move.embed_dim, seed=200 + k)
        label = f"x [B={batch}, S={tokens}, D={move.embed_dim}], {layout}, block {index}, {_mode(training)}"
        cases.append(Case(label, (block, expert, x, lateral), grad=(2,)))
    return cases


def _routed_reference(block, lateral_expert, x, lateral, settings: dict[int, _Setting]):
    """MoVE.joint_block on the tokens sorted frontal-first (the same count in every row, so one batched call
    that draws drop path as a batched block does), then put back in place; rows with different counts one at a
    time (eval mode only)."""
    setting = settings[id(block)]
    move, index = setting.move, setting.index
    counts = lateral.sum(dim=1)
    if bool((counts == counts[0]).all()):
        order = torch.argsort(lateral.to(torch.int8), dim=1, stable=True)  # frontal-routed first, in order
        sorted_x = x.gather(1, order[..., None].expand_as(x))
        out = move.joint_block(index, sorted_x, x.shape[1] - int(counts[0]))
        back = torch.argsort(order, dim=1)
        return out.gather(1, back[..., None].expand_as(out))
    assert not block.training, "rows with different numbers of lateral tokens are checked in eval mode only"
    rows = [_routed_reference(block, lateral_expert, x[b : b + 1], lateral[b : b + 1], settings) for b in range(len(x))]
    return torch.cat(rows)


def _routed_variant(
    block,
    lateral_expert,
    x,
    lateral,
    *,
    by_position=False,
    inverted=False,
    separate=False,
    drop=True,
    split_drop="",
):
    if inverted:
        lateral = ~lateral
    dp1 = block.drop_path1 if drop else nn.Identity()
    dp2 = block.drop_path2 if drop else nn.Identity()
    h = block.norm1(x)
    if separate:  # each token attends only to tokens of its own view
        same_view = lateral[:, :, None] == lateral[:, None, :]
        x = x + dp1(block.ls1(block.attn(h, attn_mask=same_view[:, None])))
    else:
        x = x + dp1(block.ls1(block.attn(h)))
    if by_position:  # the first tokens (as many as the mask has frontal ones) to the frontal expert
        n_frontal = int((~lateral[0]).sum())
        lateral = (torch.arange(x.shape[1]) >= n_frontal).expand_as(lateral)
    front = block.ls2(block.mlp(block.norm2(x)))
    side = lateral_expert(x)
    if split_drop == "front first":  # each expert's output through its own drop path draw
        front = dp2(front)
        return x + torch.where(lateral[..., None], dp2(side), front)
    if split_drop == "side first":
        side = dp2(side)
        return x + torch.where(lateral[..., None], side, dp2(front))
    return x + dp2(torch.where(lateral[..., None], side, front))


def check_routed_block(fn: Callable) -> CheckResult:
    """Grade exercise 4.2: ``fn(block, lateral_expert, x, lateral)`` for x [B, S, D] and lateral [B, S] bool
    must compute one MoVE block whose feed-forward expert is chosen per token (values and gradients w.r.t. x,
    in eval mode and in train mode with drop path)."""
    settings: dict[int, _Setting] = {}
    cases = _routed_cases(settings)

    def variant(**options):
        return lambda block, expert, x, lateral: _routed_variant(block, expert, x, lateral, **options)

    check = Check(
        "4.2",
        "MoVE with the expert chosen per token",
        "routed_block",
        cases,
        lambda block, expert, x, lateral: _routed_reference(block, expert, x, lateral, settings),
        forbidden=(MoVE,),  # lateral_expert (a LateralExpert) is given: calling it is the point
        hint="x = x + drop_path1(ls1(attn(norm1(x)))) over ALL tokens; then every token goes through ONE expert: "
        "the frontal one (norm2, mlp, ls2) where `lateral` is False, lateral_expert where it is True, and its "
        "output stays in the token's place; x + drop_path2(that output), one drop_path2 call for the whole "
        "output.",
        mistakes=[
            (
                "the expert is chosen by position (the first tokens frontal); use the mask `lateral`",
                variant(by_position=True),
            ),
            (
                "the mask is read the wrong way round: True marks the tokens of the LATERAL expert",
                variant(inverted=True),
            ),
            ("each view attends only to itself; the attention must run over all tokens", variant(separate=True)),
            (
                "drop path is missing: in train mode the two residual branches go through block.drop_path1 and "
                "block.drop_path2",
                variant(drop=False),
            ),
            (
                "drop_path2 is applied to each expert's output separately, so the two draw different masks; one "
                "drop_path2 call on the whole feed-forward output drops the branch of a sample for all its tokens",
                variant(split_drop="front first"),
            ),
            (
                "drop_path2 is applied to each expert's output separately, so the two draw different masks; one "
                "drop_path2 call on the whole feed-forward output drops the branch of a sample for all its tokens",
                variant(split_drop="side first"),
            ),
        ],
    )
    return _grade(check, fn, settings)


# ----------------------------------------------------------------------------------------------------
# Exercise 4.3: a padded mixed batch in one call
# ----------------------------------------------------------------------------------------------------
def _mixed_cases(settings: dict[int, _Setting]) -> list[Case]:
    specs = [  # has_lateral, patches per view, block, training, seed
        ([True, False, True], 4, 0, False, 11),
        ([False, True], 2, 1, False, 12),
        ([True, True], 4, 1, False, 13),
        ([False, False], 3, 0, False, 14),
        ([True, False, False, True, False, True], 2, 1, True, 15),
        ([False, True, True, False], 4, 0, True, 16),
    ]
    cases = []
    for k, (has, patches, index, training, seed) in enumerate(specs):
        move = _tiny_move(seed)
        block, expert = move.vit.blocks[index], move.lateral_experts[index]
        settings[id(block)] = _Setting(move, index, training, seed)
        has_lateral = torch.tensor(has)
        x = randn(len(has), 1 + 2 * patches, move.embed_dim, seed=300 + k)  # padding slots hold noise
        label = (
            f"x [B={len(has)}, S=1+2*{patches}, D={move.embed_dim}], has_lateral={has} (the lateral slots of the "
            f"studies without one hold random padding), block {index}, {_mode(training)}"
        )
        cases.append(Case(label, (block, expert, x, has_lateral), grad=(2,)))
    return cases


def _mixed_batched(block, lateral_expert, x, has_lateral, *, mask_keys=True, zero=True, drop=True):
    """The block on the whole padded batch in one call: padded slots masked out as attention keys, zero out."""
    n_frontal = 1 + (x.shape[1] - 1) // 2
    valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    valid[:, n_frontal:] = has_lateral[:, None]
    dp1 = block.drop_path1 if drop else nn.Identity()
    dp2 = block.drop_path2 if drop else nn.Identity()
    x = x + dp1(block.ls1(block.attn(block.norm1(x), attn_mask=valid[:, None, None, :] if mask_keys else None)))
    front = block.ls2(block.mlp(block.norm2(x[:, :n_frontal])))
    x = x + dp2(torch.cat([front, lateral_expert(x[:, n_frontal:])], dim=1))
    return x * valid[..., None] if zero else x


def _mixed_reference(block, lateral_expert, x, has_lateral, settings: dict[int, _Setting]):
    """Eval mode: the library's two groups (MoVE.joint_block on the studies with a lateral, the plain timm block
    on the first 1 + N tokens of the others, zeros in their lateral slots). Train mode: the same block on the
    whole batch in one call (drop path draws one mask per study and branch, as a batched block does); in eval
    mode the two agree (tests/test_exercises_ch04_06.py)."""
    if block.training:
        return _mixed_batched(block, lateral_expert, x, has_lateral)
    setting = settings[id(block)]
    n_frontal = 1 + (x.shape[1] - 1) // 2
    with_lateral = setting.move.joint_block(setting.index, x[has_lateral], n_frontal)
    single = F.pad(block(x[~has_lateral, :n_frontal]), (0, 0, 0, x.shape[1] - n_frontal))
    out = torch.zeros_like(x)
    out = out.index_put((has_lateral.nonzero()[:, 0],), with_lateral)
    return out.index_put(((~has_lateral).nonzero()[:, 0],), single)


def check_mixed_batch_block(fn: Callable) -> CheckResult:
    """Grade exercise 4.3: ``fn(block, lateral_expert, x, has_lateral)`` for a padded batch x [B, 1 + 2N, D] and
    has_lateral [B] must equal MoVE's two groups run apart, with zeros in the missing lateral slots (values and
    gradients w.r.t. x, in eval mode and in train mode with drop path)."""
    settings: dict[int, _Setting] = {}
    cases = _mixed_cases(settings)

    def variant(**options):
        return lambda block, expert, x, has_lateral: _mixed_batched(block, expert, x, has_lateral, **options)

    check = Check(
        "4.3",
        "a mixed batch in one call",
        "mixed_batch_block",
        cases,
        lambda block, expert, x, has_lateral: _mixed_reference(block, expert, x, has_lateral, settings),
        forbidden=(MoVE,),  # lateral_expert (a LateralExpert) is given: calling it is the point
        hint="the real tokens are [CLS], the frontal tokens and the lateral slots of the studies that have a "
        "lateral; no query may read the padding, so mask it over the keys (the last axis of attn_mask, True = may "
        "attend); then MoVE's two experts and drop paths as usual; the padded slots come out as zeros.",
        mistakes=[
            (
                "the padded lateral slots are still attention keys, so the studies without a lateral read noise (as "
                "the published code's zero images are read); mask them out as keys",
                variant(mask_keys=False),
            ),
            (
                "the lateral slots of a study without a lateral must come out as zeros (they are not tokens of the "
                "study; MoVE's patch_mask marks them out)",
                variant(zero=False),
            ),
            (
                "drop path is missing: in train mode the two residual branches go through block.drop_path1 and "
                "block.drop_path2",
                variant(drop=False),
            ),
        ],
    )
    return _grade(check, fn, settings)


# ----------------------------------------------------------------------------------------------------
# The exercise texts; the solutions are solutions/ch04_extra_parameters.py, ch04_routed_block.py,
# ch04_mixed_batch_block.py
# ----------------------------------------------------------------------------------------------------
EXTRA_PARAMETERS = r"""
MoVE turns a ViT into a two-view encoder by adding one thing per block: a lateral feed-forward expert
(Method §3). **Predict first**: how many parameters does it add to ViT-B/16 (depth 12, $D = 768$,
`mlp_ratio` 4, no layer scale), and what share of the ViT's 86 M is that? Is it closer to doubling the
model or to a few percent?

Then write `move_extra_parameters(depth, dim, mlp_ratio=4.0, layer_scale=True)`: the number of parameters
MoVE's lateral experts add to a timm ViT of that shape (MLP hidden size `int(dim * mlp_ratio)`; with
`layer_scale` the blocks have a layer scale, without it none). Work it out from what a lateral expert is;
do not build a `MoVE`. Then call it with the ViT-B/16 numbers to check your prediction. The check compares
your count with the parameters of `MoVE(vit).lateral_experts` for tiny ViTs of several shapes.
"""

ROUTED_BLOCK = r"""
In MoVE the expert is chosen by **position**: the first `n_frontal` tokens go to the frontal expert, the rest
to the lateral one (Method §3). Write `routed_block(block, lateral_expert, x, lateral)` where the expert is
chosen **per token by a mask** instead: `x` is `[B, S, D]`, `lateral` is `[B, S]` bool (True: the token
belongs to the lateral view and goes through `lateral_expert`; False: `[CLS]` or frontal, through the block's
own `norm2`, `mlp`, `ls2`). The tokens may come in any order (views interleaved, shuffled, a different number
of lateral tokens per row); each output token stays where its input was.

Keep everything else of a MoVE block (one shared attention over all tokens, pre-norm, layer scales,
residuals) and **drop path**: in train mode `block.drop_path1` and `block.drop_path2` drop a whole residual
branch per sample; both views' feed-forward outputs belong to one branch.

Before you run the check, convince yourself why sorting the tokens of a row (frontal first) would not change
the attention's output for any token: this is how the check computes what it compares with
(`MoVE.joint_block` on sorted tokens). It runs in eval mode and in train mode with a fixed random seed, and
compares values and gradients.
"""

MIXED_BATCH_BLOCK = r"""
A batch mixes studies with and without a lateral view. The published code gives the studies without one an
all-zero lateral image; `medst` runs two groups apart (`1 + 2N` and `1 + N` tokens; Method §3). Write
`mixed_batch_block(block, lateral_expert, x, has_lateral)`: one MoVE block on the **whole padded batch in one
call** that gives exactly what the two groups give. `x` is `[B, 1 + 2N, D]` = `[CLS, N frontal, N lateral
slots]`; `has_lateral` is `[B]` bool; in a study without a lateral the N lateral slots hold padding (any
values).

* A study with a lateral: the MoVE block (shared attention, frontal expert on `[CLS]` + frontal tokens,
  `lateral_expert` on the lateral tokens).
* A study without one: exactly the plain timm block on its `1 + N` tokens; its padding must not change
  anything, and its lateral slots come out as **zeros** (what `patch_mask` marks out in chapter 4).

timm's attention takes a mask: `block.attn(h, attn_mask=m)` with `m` bool, broadcastable to
`[B, heads, S, S]` (query, key), True where attending is allowed. Think about which of the two axes the
padding must be masked on, and what a softmax over a row with no allowed entry gives. Keep drop path
(train mode). The check runs in eval mode (against the library's two groups) and in train mode with a fixed
random seed, and compares values and gradients.
"""

CHAPTER = "04_move"
EXERCISES = [
    Exercise(
        key="move-extra-parameters",
        chapter=CHAPTER,
        number="4.1",
        title="what MoVE adds to a ViT",
        function="move_extra_parameters",
        prompt=EXTRA_PARAMETERS,
        solution="ch04_extra_parameters",
        checker=check_move_extra_parameters,
        level="easy",
    ),
    Exercise(
        key="routed-block",
        chapter=CHAPTER,
        number="4.2",
        title="MoVE with the expert chosen per token",
        function="routed_block",
        prompt=ROUTED_BLOCK,
        solution="ch04_routed_block",
        checker=check_routed_block,
        level="medium",
    ),
    Exercise(
        key="mixed-batch-block",
        chapter=CHAPTER,
        number="4.3",
        title="a mixed batch in one call",
        function="mixed_batch_block",
        prompt=MIXED_BATCH_BLOCK,
        solution="ch04_mixed_batch_block",
        checker=check_mixed_batch_block,
        level="hard",
    ),
]

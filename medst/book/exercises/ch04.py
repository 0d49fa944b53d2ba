"""Exercise 4.1 (chapter 4, Method §3): one Mixture-of-View-Experts block.

The checker compares the reader's ``move_block`` with :meth:`medst.models.vision.MoVE.joint_block` on a tiny MoVE
with layer scale (a plain timm block when there are no lateral tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, generator, randn, run_check
from medst.models.vision import MoVE


def _tiny_move(seed: int, dim: int = 16):
    """A 2-block MoVE around a tiny timm ViT with layer scale; every weight jittered so that norms, layer
    scales and the two experts all differ."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    move = MoVE(
        VisionTransformer(
            img_size=16, patch_size=8, embed_dim=dim, depth=2, num_heads=2, init_values=0.5, num_classes=0
        )
    )
    with torch.no_grad():
        for p in move.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator(seed + p.numel())))
    return move.eval()


def _move_cases() -> list[tuple[Case, Any, int]]:
    cases = []
    move = _tiny_move(0)
    for seed, (batch, patches, block, lateral) in enumerate(
        [(2, 4, 0, True), (3, 4, 1, True), (1, 6, 0, True), (2, 4, 1, False)]
    ):
        n_frontal = 1 + patches
        tokens = n_frontal + (patches if lateral else 0)
        x = randn(batch, tokens, move.embed_dim, seed=200 + seed)
        label = (
            f"x [B={batch}, S={tokens}, D={move.embed_dim}] = [CLS, {patches} frontal"
            f"{f', {patches} lateral' if lateral else ''} tokens], n_frontal={n_frontal}, block {block}"
            f"{'' if lateral else ' (no lateral tokens: a plain ViT block)'}"
        )
        cases.append((Case(label, (move.vit.blocks[block], move.lateral_experts[block], x, n_frontal)), move, block))
    return cases


def _separate_attention(block, lateral_expert, x, n_frontal):
    """Mistake model: each view attends only to itself."""
    front, side = x[:, :n_frontal], x[:, n_frontal:]
    front = front + block.ls1(block.attn(block.norm1(front)))
    side = side + block.ls1(block.attn(block.norm1(side))) if side.shape[1] else side
    x = torch.cat([front, side], dim=1)
    return x + torch.cat([block.ls2(block.mlp(block.norm2(x[:, :n_frontal]))), lateral_expert(x[:, n_frontal:])], dim=1)


def _no_residual(block, lateral_expert, x, n_frontal):
    """Mistake model: the feed-forward outputs replace the tokens instead of being added."""
    x = x + block.ls1(block.attn(block.norm1(x)))
    return torch.cat([block.ls2(block.mlp(block.norm2(x[:, :n_frontal]))), lateral_expert(x[:, n_frontal:])], 1)


def check_move_block(fn: Callable) -> CheckResult:
    """Grade exercise 4.1: ``fn(block, lateral_expert, x, n_frontal)`` must compute one MoVE block on
    x [B, S, D] exactly as :meth:`medst.models.vision.MoVE.joint_block` (a plain timm block when S = n_frontal)."""
    items = _move_cases()
    blocks = {id(case.args[0]): (move, i) for case, move, i in items}

    def reference(block, lateral_expert, x, n_frontal):
        move, i = blocks[id(block)]
        return move.joint_block(i, x, n_frontal)

    def plain_block(block, lateral_expert, x, n_frontal):
        return block(x)

    with torch.no_grad():
        return run_check(
            Check(
                "4.1",
                "one Mixture-of-View-Experts block",
                "move_block",
                [c for c, _, _ in items],
                reference,
                forbidden=(MoVE,),
                hint="x = x + drop_path1(ls1(attn(norm1(x)))) over ALL tokens (one shared attention); then the first "
                "n_frontal tokens go through block.norm2/mlp/ls2, the rest through lateral_expert, and the "
                "concatenated outputs are added to x.",
                mistakes=[
                    ("the lateral tokens go through the frontal expert; use lateral_expert for them", plain_block),
                    (
                        "the two views attend separately; the attention must run over the whole sequence",
                        _separate_attention,
                    ),
                    ("the feed-forward output is not added to x (missing residual)", _no_residual),
                ],
            ),
            fn,
        )


# ----------------------------------------------------------------------------------------------------
# The exercise text; the solution is solutions/ch04_move_block.py
# ----------------------------------------------------------------------------------------------------
MOVE_BLOCK = r"""
Write `move_block(block, lateral_expert, x, n_frontal)`: one block of MoVE on the sequence
`x = [CLS, frontal tokens, lateral tokens]` of shape `[B, S, D]`. `block` is a timm ViT `Block`;
its attention is **shared** by both views (pre-norm, residual), then the first `n_frontal` tokens
(`[CLS]` and the frontal patches) go through the block's own feed-forward expert
(`norm2`, `mlp`, `ls2`), the lateral tokens through `lateral_expert`, and the two outputs,
concatenated back in order, are added to `x` (through `drop_path2`).

With no lateral tokens (`n_frontal == S`) your block must be exactly the plain timm block. The check
compares with `MoVE.joint_block` on a tiny MoVE with layer scale.
"""

CHAPTER = "04_move"
EXERCISES = [
    Exercise(
        key="move-block",
        chapter=CHAPTER,
        number="4.1",
        title="one Mixture-of-View-Experts block",
        function="move_block",
        prompt=MOVE_BLOCK,
        solution="ch04_move_block",
        checker=check_move_block,
    ),
]

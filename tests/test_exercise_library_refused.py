"""A submission that is, wraps or calls the library's own implementation is refused, whatever its name."""

from __future__ import annotations

import functools

import pytest
from timm.models.vision_transformer import VisionTransformer

from medst.book.exercises import (
    ExerciseError,
    check_masked_batch_norm,
    check_masked_cycle,
    check_masked_word_side,
    check_merge_words_max,
    check_mixed_batch_block,
    check_move_extra_parameters,
    check_patient_infonce,
    check_rmr_mse,
    check_routed_block,
    check_word_weight_collapse,
)
from medst.losses.contrastive import global_alignment_loss
from medst.losses.local import LocalAlignment
from medst.losses.temporal import fmc_loss, rmr_details, rmr_loss
from medst.models.norm import batch_norm_rows
from medst.models.text import merge_word_pieces
from medst.models.vision import MoVE


def _masked_bn_through_library(bn, x, mask):
    flat = batch_norm_rows(bn, x.reshape(-1, x.shape[-1]), mask.reshape(-1))
    return flat.reshape(x.shape) * mask[..., None]


def _word_side_through_library(words, patches, weighting, word_mask, patch_mask, temperature=0.1):
    local = LocalAlignment(words.shape[-1], temperature)
    local.word_weighting = weighting
    return local(words, patches, word_mask, patch_mask, return_details=True).loss_word


def _collapse_through_library(words, patches, weighting, steps=30, lr=5.0, entropy_weight=0.0):
    local = LocalAlignment(words.shape[-1]).to(words.dtype)
    local.word_weighting = weighting
    return local(words, patches, return_details=True).word_weights.max(dim=1).values.mean().expand(steps + 1)


def _move_block_through_library(block, lateral_expert, x, mask):
    # fails inside the library's method; what is reported is that it was called
    return MoVE.joint_block(None, 0, x, x.shape[1])


def _count_through_move(depth, dim, mlp_ratio=4.0, layer_scale=True):
    vit = VisionTransformer(img_size=8, patch_size=8, embed_dim=dim, depth=depth, num_heads=2, mlp_ratio=mlp_ratio)
    return sum(p.numel() for p in MoVE(vit).lateral_experts.parameters())


def _rmr_mse_through_details(a, b, temperature=0.1):
    return rmr_details(a, b, temperature=temperature).error.pow(2).mean()


def _cycle_through_fmc(a, b, step_mask, temperature=0.1, variance_lambda=1e-3):
    return fmc_loss(a, b, temperature=temperature) + rmr_loss(a, b, temperature=temperature)


CASES = [
    ("builds a MoVE", check_move_extra_parameters, _count_through_move),
    ("calls MoVE", check_routed_block, _move_block_through_library),
    ("calls MoVE", check_mixed_batch_block, _move_block_through_library),
    ("calls LocalAlignment", check_masked_word_side, _word_side_through_library),
    ("calls LocalAlignment", check_word_weight_collapse, _collapse_through_library),
    ("alias", check_rmr_mse, rmr_details),
    ("partial", check_rmr_mse, functools.partial(rmr_loss)),
    ("calls rmr_details", check_rmr_mse, _rmr_mse_through_details),
    ("calls fmc_loss", check_masked_cycle, _cycle_through_fmc),
    ("alias", check_patient_infonce, lambda img, txt, patient, temperature=0.07: global_alignment_loss(img, txt)),
    (
        "wrapper",
        check_patient_infonce,
        lambda img, txt, patient, temperature=0.07: global_alignment_loss(img, txt, temperature),
    ),
    ("wrapper", check_merge_words_max, lambda h, ids, c, sep, mask=None: merge_word_pieces(h, ids, c, sep, mask)[0]),
    ("calls batch_norm_rows", check_masked_batch_norm, _masked_bn_through_library),
]


@pytest.mark.parametrize("kind,checker,submission", CASES, ids=[f"{c.__name__}-{k}" for k, c, _ in CASES])
def test_library_submission_is_refused(kind, checker, submission):
    with pytest.raises(ExerciseError, match="library's"):
        checker(submission)

"""A submission that is, wraps or calls the library's own implementation is refused, whatever its name."""

from __future__ import annotations

import functools

import pytest

from medst.book.exercises import (
    ExerciseError,
    check_fmc,
    check_global_loss,
    check_local_word_side,
    check_move_block,
    check_rmr,
    check_word_merge,
)
from medst.losses.contrastive import global_alignment_loss
from medst.losses.local import LocalAlignment
from medst.losses.temporal import fmc_loss, rmr_details, rmr_loss
from medst.models.text import merge_word_pieces
from medst.models.vision import MoVE


def _word_side_through_library(words, patches, weighting, temperature=0.1):
    local = LocalAlignment(words.shape[-1], temperature)
    local.word_weighting = weighting
    return local(words, patches, return_details=True).loss_word


def _move_block_through_library(block, lateral_expert, x, n_frontal):
    # fails inside the library's method; what is reported is that it was called
    return MoVE.joint_block(None, 0, x, n_frontal)


def _rmr_through_details(a, b, temperature=0.1, variance_lambda=1e-3):
    return rmr_details(a, b, temperature=temperature, variance_lambda=variance_lambda).loss


CASES = [
    ("alias", check_fmc, fmc_loss),
    ("partial", check_fmc, functools.partial(fmc_loss)),
    ("wrapper", check_fmc, lambda a, b, temperature=0.1: fmc_loss(a, b, temperature=temperature)),
    ("alias", check_rmr, rmr_loss),
    ("calls rmr_details", check_rmr, _rmr_through_details),
    ("alias", check_global_loss, global_alignment_loss),
    ("wrapper", check_global_loss, lambda img, txt, temperature=0.07: global_alignment_loss(img, txt, temperature)),
    ("alias", check_word_merge, merge_word_pieces),
    ("calls MoVE", check_move_block, _move_block_through_library),
    ("calls LocalAlignment", check_local_word_side, _word_side_through_library),
]


@pytest.mark.parametrize("kind,checker,submission", CASES, ids=[f"{c.__name__}-{k}" for k, c, _ in CASES])
def test_library_submission_is_refused(kind, checker, submission):
    with pytest.raises(ExerciseError, match="library's"):
        checker(submission)

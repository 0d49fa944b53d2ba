"""Evaluation of Med-ST models (Method §8) and grounding of words in images.

``medst evaluate`` runs the tasks of :data:`medst.eval.tasks.TASKS` (:func:`medst.eval.run.evaluate`); each
task lives in its own module (temporal, sentence, zeroshot, finetune, retrieval, grounding_task) on top of
:mod:`medst.eval.embed`. The pointing game of :mod:`medst.eval.grounding` is exported here.
"""

from .grounding import (
    FINDINGS,
    GroundingItem,
    PixelAffine,
    chance_hit_rate,
    letterbox_affine,
    load_boxes,
    patch_centers,
    plot_attention,
    pointing_game,
    pointing_hit,
    split_views,
)


class TaskSkipped(Exception):
    """A task cannot run on this data or model; the message says why (``medst evaluate`` records it under
    ``meta.skipped`` and goes on)."""


__all__ = [
    "FINDINGS",
    "GroundingItem",
    "PixelAffine",
    "TaskSkipped",
    "chance_hit_rate",
    "letterbox_affine",
    "load_boxes",
    "patch_centers",
    "plot_attention",
    "pointing_game",
    "pointing_hit",
    "split_views",
]

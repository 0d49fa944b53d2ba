"""Evaluation of Med-ST models (Method §8) and grounding of words in images."""
from .grounding import (FINDINGS, GroundingItem, PixelAffine, chance_hit_rate, letterbox_affine, load_boxes,
                        patch_centers, plot_attention, pointing_game, pointing_hit, split_views)

__all__ = ["FINDINGS", "GroundingItem", "PixelAffine", "chance_hit_rate", "letterbox_affine", "load_boxes",
           "patch_centers",
           "plot_attention", "pointing_game", "pointing_hit", "split_views"]

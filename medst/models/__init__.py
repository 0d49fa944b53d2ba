"""Encoders and projection heads of Med-ST (METHOD §2-§3)."""
from medst.models.heads import GlobalHead, LocalHead
from medst.models.text import (
    TextEncoder,
    TextOutput,
    merge_word_pieces,
    minilm_path,
    train_wordpiece_tokenizer,
)
from medst.models.vision import MoVE, VisionOutput, create_move

__all__ = [
    "GlobalHead",
    "LocalHead",
    "MoVE",
    "TextEncoder",
    "TextOutput",
    "VisionOutput",
    "create_move",
    "merge_word_pieces",
    "minilm_path",
    "train_wordpiece_tokenizer",
]

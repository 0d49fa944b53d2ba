"""Encoders, projection heads and the full Med-ST model (Method §2-§3, §7)."""

from medst.models.heads import GlobalHead, LocalHead
from medst.models.medst import MedST, MedSTOutput, build_medst, load_run
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
    "MedST",
    "MedSTOutput",
    "build_medst",
    "load_run",
    "MoVE",
    "TextEncoder",
    "TextOutput",
    "VisionOutput",
    "create_move",
    "merge_word_pieces",
    "minilm_path",
    "train_wordpiece_tokenizer",
]
